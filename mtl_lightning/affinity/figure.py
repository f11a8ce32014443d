"""A labelled affinity figure (matplotlib, optional): task names, values, a fixed colour scale.

matplotlib is imported lazily, and only its object-oriented API with the Agg canvas is used
(no ``pyplot``, no global backend switch). Without matplotlib, :func:`affinity_figure_image`
returns None and callers fall back to :func:`~mtl_lightning.affinity.heatmap_image`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def nice_scale(value: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is ``>= value`` (1.0 for 0 or NaN).

    Example:
        >>> nice_scale(0.0031), nice_scale(0.02), nice_scale(0.0), nice_scale(130.0)
        (0.005, 0.02, 1.0, 200.0)
    """
    if not value > 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if step * power >= value * (1 - 1e-9):
            return float(f"{step * power:.12g}")
    return 10.0 * power  # pragma: no cover


def affinity_figure(
    matrix: Sequence[Sequence[float | None]] | np.ndarray | Tensor,
    tasks: Sequence[str],
    scale: float,
    title: str = "",
) -> Any:
    """A matplotlib ``Figure`` of an affinity matrix (row = source, column = target).

    Off-diagonal cells: a diverging colour map fixed to ``[-scale, scale]`` (blue hurts, red
    helps; a colour bar, with arrows where values saturate), the value printed in the cell.
    The diagonal (self-affinity, usually far larger) is grey with its value. A pair never
    measured (``None``/NaN) is hatched grey and marked ``n/a``.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``scale`` is not > 0, or the matrix is not ``len(tasks)`` square.
    """
    from matplotlib.figure import Figure

    m = np.array([[np.nan if v is None else float(v) for v in row] for row in _rows(matrix)])
    n = len(tasks)
    if m.shape != (n, n):
        raise ValueError(f"affinity matrix of shape {m.shape} for {n} tasks {list(tasks)}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    off = np.where(np.eye(n, dtype=bool), np.nan, m)
    size = 1.3 + 0.62 * n  # compact, so the text stays legible in TensorBoard's image card
    fig = Figure(figsize=(size + 1.2, size), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    cmap = _colour_map()
    shown = ax.imshow(np.ma.masked_invalid(off), cmap=cmap, vmin=-scale, vmax=scale)
    decimals = max(0, 1 - math.floor(math.log10(scale)))  # two digits of the scale
    for i in range(n):
        for j in range(n):
            _cell(ax, i, j, m[i, j], scale, decimals)
    ax.set_xticks(range(n), labels=list(tasks), rotation=45 if n > 6 else 0, fontsize=11)
    ax.set_yticks(range(n), labels=list(tasks), fontsize=11)
    ax.set_xlabel("target j (its loss)", fontsize=11)
    ax.set_ylabel("source i (its step)", fontsize=11)
    ax.set_title(title, fontsize=11)
    bar = fig.colorbar(shown, ax=ax, extend="both", shrink=0.9)
    bar.set_label(f"fixed ±{scale:g}: red helps, blue hurts", fontsize=10)
    return fig


def figure_to_image(fig: Any) -> Tensor:
    """Render a matplotlib ``Figure`` with the Agg canvas: a ``[3, H, W]`` float image in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), dtype=np.float32) / 255.0
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)


def affinity_figure_image(
    matrix: Sequence[Sequence[float | None]] | np.ndarray | Tensor,
    tasks: Sequence[str],
    scale: float,
    title: str = "",
) -> Tensor | None:
    """:func:`affinity_figure` rendered as a ``[3, H, W]`` image; None without matplotlib."""
    try:
        fig = affinity_figure(matrix, tasks, scale, title)
    except ImportError:
        return None
    return figure_to_image(fig)


def _rows(matrix: Any) -> list[list[Any]]:
    if isinstance(matrix, Tensor):
        return matrix.detach().cpu().double().tolist()
    return [list(row) for row in matrix]


def _colour_map() -> Any:
    from matplotlib import colormaps

    # the diagonal and unmeasured cells are masked here and drawn by _cell
    return colormaps["RdBu_r"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))


def _cell(ax: Any, i: int, j: int, value: float, scale: float, decimals: int) -> None:
    from matplotlib.patches import Rectangle

    corner = (j - 0.5, i - 0.5)
    if math.isnan(value):
        ax.add_patch(Rectangle(corner, 1, 1, facecolor="0.85", hatch="//", edgecolor="0.55"))
        ax.text(j, i, "n/a", ha="center", va="center", fontsize=10, color="0.25")
        return
    if i == j:
        ax.add_patch(Rectangle(corner, 1, 1, facecolor="0.9", edgecolor="white"))
        ax.text(
            j, i, f"{value:.{decimals}f}\nself", ha="center", va="center", fontsize=9, color="0.3"
        )
        return
    strong = abs(value) > 0.6 * scale  # white text on dark cells
    ax.text(
        j,
        i,
        f"{value:.{decimals}f}",
        ha="center",
        va="center",
        fontsize=10,
        color="white" if strong else "black",
    )


def off_diagonal_max(matrix: Sequence[Sequence[float | None]]) -> float:
    """The largest ``|value|`` off the diagonal, ignoring ``None``/NaN (0.0 if there is none).

    Example:
        >>> off_diagonal_max([[5.0, -0.02], [None, 3.0]])
        0.02
    """
    values = [
        abs(v)
        for i, row in enumerate(matrix)
        for j, v in enumerate(row)
        if i != j and v is not None and v == v
    ]
    return max(values, default=0.0)
