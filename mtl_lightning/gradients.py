"""Per-task gradient plumbing for gradient-based weighting: flat gradients, Gramians, cosines."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def flat_grad(
    output: Tensor,
    inputs: Sequence[Tensor],
    grad_output: Tensor | None = None,
    retain_graph: bool = True,
) -> Tensor:
    """Gradient of ``output`` (weighted by ``grad_output``) w.r.t. ``inputs``, flattened.

    Inputs that ``output`` does not depend on contribute zeros.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> b = torch.tensor(3.0, requires_grad=True)
        >>> flat_grad((w * w).sum(), [w, b])
        tensor([2., 4., 0.])
    """
    grads = torch.autograd.grad(
        output, list(inputs), grad_outputs=grad_output, retain_graph=retain_graph, allow_unused=True
    )
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, inputs, strict=True)
        ]
    )


def write_grads(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Write a flat gradient vector into ``.grad`` of ``params`` (in order).

    Example:
        >>> p = nn.Parameter(torch.zeros(2, 2))
        >>> write_grads([p], torch.arange(4.0))
        >>> p.grad
        tensor([[0., 1.],
                [2., 3.]])
    """
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    if offset != flat.numel():
        raise ValueError(f"gradient vector has {flat.numel()} entries for {offset} parameters")


def gram_matrix(rows: Tensor) -> Tensor:
    """``rows @ rows.T`` in at least float32, also inside an autocast region (where a matmul
    would run in bf16 or fp16 and round every entry).

    Example:
        >>> rows = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     gram_matrix(rows)
        tensor([[5., 6.],
                [6., 9.]])
    """
    dtype = torch.promote_types(rows.dtype, torch.float32)
    with torch.autocast(device_type=rows.device.type, enabled=False):
        return rows.to(dtype) @ rows.to(dtype).T


def cosine_matrix(gramian: Tensor, eps: float = 1e-20) -> Tensor:
    """Pairwise cosine similarities from a Gramian; NaN where a gradient is zero.

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
        >>> cosine_matrix(g @ g.T)
        tensor([[ 1.0000, -0.7071],
                [-0.7071,  1.0000]])
    """
    norms = gramian.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > eps, gramian / denom.clamp_min(eps), torch.nan)
