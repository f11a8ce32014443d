"""Render an affinity matrix as an RGB image tensor with numpy (no plotting library needed)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def heatmap_image(
    matrix: np.ndarray | Tensor, cell: int = 24, scale: float | None = None
) -> Tensor:
    """A ``[3, H, W]`` float image in ``[0, 1]``: blue < 0 < red, white at 0, grey grid lines.

    Row ``i`` is the source task, column ``j`` the target (the matrix as printed). ``scale`` is
    the value mapped to full colour (default: the largest absolute off-diagonal entry, so small
    cross-task effects stay visible next to the larger self-affinities; values beyond saturate).

    Example:
        >>> img = heatmap_image(np.array([[1.0, -1.0], [0.0, 0.5]]), cell=4, scale=1.0)
        >>> img.shape, img[:, 1, 1].tolist(), img[:, 1, 7].tolist(), img[:, 7, 1].tolist()
        (torch.Size([3, 11, 11]), [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0])
    """
    m = np.asarray(matrix.detach().cpu() if isinstance(matrix, Tensor) else matrix, dtype=float)
    n = m.shape[0]
    if scale is None:
        off = m[~np.eye(n, dtype=bool)] if n > 1 else m.ravel()
        scale = float(np.abs(off).max()) if off.size else 1.0
    v = np.clip(np.nan_to_num(m) / (scale if scale > 0 else 1.0), -1.0, 1.0)
    red = np.where(v < 0, 1.0 + v, 1.0)
    green = 1.0 - np.abs(v)
    blue = np.where(v > 0, 1.0 - v, 1.0)
    colours = np.stack([red, green, blue])  # [3, n, n]
    size = n * cell + n + 1
    image = np.full((3, size, size), 0.5)
    for i in range(n):
        for j in range(n):
            top, left = 1 + i * (cell + 1), 1 + j * (cell + 1)
            image[:, top : top + cell, left : left + cell] = colours[:, i, j, None, None]
    return torch.from_numpy(image).float()
