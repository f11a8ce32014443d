"""`DenseTrunk`: Dense -> norm -> ReLU -> Dropout blocks narrowing with the input width."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

DenseNorm = Literal["batch", "layer", "none"]


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


class DenseTrunk(nn.Module):
    """Shared dense trunk over ``[batch, in_features]`` tabular inputs -> ``[batch, out_features]``.

    One ``Linear -> norm -> ReLU -> Dropout`` block per divisor; block ``k`` has width
    ``max(1, in_features // divisors[k])`` (the user's ``n/4, n/12, n/20``), so ``out_features``
    is the last block's width.

    Args:
        in_features: Width ``n`` of the input.
        divisors: Width divisors of the blocks, narrowing.
        dropout: Dropout probability after each block.
        norm: Normalisation after each ``Linear``: ``"batch"`` (BatchNorm, the default),
            ``"layer"`` (LayerNorm: per sample, so a DDP run without ``sync_batchnorm`` — which
            needs GPUs — computes what one process would) or ``"none"``.

    Example:
        >>> import torch
        >>> trunk = DenseTrunk(120)
        >>> [b[0].out_features for b in trunk.blocks], trunk(torch.zeros(4, 120)).shape
        ([30, 10, 6], torch.Size([4, 6]))
        >>> type(DenseTrunk(120, norm="layer").blocks[0][1]).__name__
        'LayerNorm'
    """

    def __init__(
        self,
        in_features: int,
        divisors: Sequence[int] = (4, 12, 20),
        dropout: float = 0.1,
        norm: DenseNorm = "batch",
    ) -> None:
        super().__init__()
        if in_features < 1 or not divisors or any(d < 1 for d in divisors):
            raise ValueError(
                f"need in_features >= 1 and positive divisors, got {in_features}, {divisors}"
            )
        if norm not in ("batch", "layer", "none"):
            raise ValueError(f"norm must be 'batch', 'layer' or 'none', got {norm!r}")
        self.in_features = in_features
        blocks = []
        previous = in_features
        for d in divisors:
            width = max(1, in_features // d)
            blocks.append(
                nn.Sequential(
                    nn.Linear(previous, width),
                    _norm(norm, width),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                )
            )
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.out_features = previous

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"DenseTrunk expects [batch, {self.in_features}] features, got {list(x.shape)}"
            )
        return self.blocks(x)
