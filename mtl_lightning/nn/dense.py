"""`DenseTrunk`: Dense -> BatchNorm -> ReLU -> Dropout blocks narrowing with the input width."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class DenseTrunk(nn.Module):
    """Shared dense trunk over ``[batch, in_features]`` tabular inputs -> ``[batch, out_features]``.

    One ``Linear -> BatchNorm1d -> ReLU -> Dropout`` block per divisor; block ``k`` has width
    ``max(1, in_features // divisors[k])`` (the user's ``n/4, n/12, n/20``), so ``out_features``
    is the last block's width.

    Args:
        in_features: Width ``n`` of the input.
        divisors: Width divisors of the blocks, narrowing.
        dropout: Dropout probability after each block.

    Example:
        >>> import torch
        >>> trunk = DenseTrunk(120)
        >>> [b[0].out_features for b in trunk.blocks], trunk(torch.zeros(4, 120)).shape
        ([30, 10, 6], torch.Size([4, 6]))
    """

    def __init__(
        self, in_features: int, divisors: Sequence[int] = (4, 12, 20), dropout: float = 0.1
    ) -> None:
        super().__init__()
        if in_features < 1 or not divisors or any(d < 1 for d in divisors):
            raise ValueError(
                f"need in_features >= 1 and positive divisors, got {in_features}, {divisors}"
            )
        self.in_features = in_features
        blocks = []
        previous = in_features
        for d in divisors:
            width = max(1, in_features // d)
            blocks.append(
                nn.Sequential(
                    nn.Linear(previous, width),
                    nn.BatchNorm1d(width),
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
