"""`DenseTrunk`: Dense -> norm -> ReLU -> Dropout blocks, widths given or narrowing with the input."""

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


def block_widths(
    in_features: int,
    widths: Sequence[int] | None = None,
    divisors: Sequence[int] | None = None,
    min_width: int = 4,
) -> list[int]:
    """The blocks' widths: ``widths`` as given, or ``in_features // d`` for each divisor.

    A width computed from a divisor below ``min_width`` is an error naming the block and the
    input size (it would silently squeeze the shared embedding to a few dimensions).

    Example:
        >>> block_widths(120, divisors=[4, 12, 20])
        [30, 10, 6]
        >>> block_widths(20, widths=[20, 10, 5])
        [20, 10, 5]
        >>> block_widths(20, divisors=[4, 12, 20])
        Traceback (most recent call last):
        ...
        ValueError: DenseTrunk block 1 (divisor 12): in_features 20 // 12 = 1 is below min_width 4; give explicit widths (e.g. widths: [20, 10, 5]) or smaller divisors (e.g. divisors: [1, 2])
    """
    if in_features < 1:
        raise ValueError(f"DenseTrunk: in_features must be >= 1, got {in_features}")
    if widths is not None and divisors is not None:
        raise ValueError("DenseTrunk: give widths or divisors, not both")
    if widths is not None:
        widths = list(widths)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"DenseTrunk: widths must be positive integers, got {widths}")
        return widths
    divisors = list(divisors if divisors is not None else (4, 12, 20))
    if not divisors or any(not isinstance(d, int) or d < 1 for d in divisors):
        raise ValueError(f"DenseTrunk: divisors must be positive integers, got {divisors}")
    out = []
    for k, d in enumerate(divisors):
        width = in_features // d
        if width < min_width:
            raise ValueError(
                f"DenseTrunk block {k} (divisor {d}): in_features {in_features} // {d} = {width} "
                f"is below min_width {min_width}; give explicit widths (e.g. widths: "
                f"[{in_features}, {max(in_features // 2, 1)}, {max(in_features // 4, 1)}]) or "
                f"smaller divisors (e.g. divisors: [1, 2])"
            )
        out.append(width)
    return out


class DenseTrunk(nn.Module):
    """Shared dense trunk over ``[batch, in_features]`` tabular inputs -> ``[batch, out_features]``.

    One ``Linear -> norm -> ReLU -> Dropout`` block per width. The widths are ``widths`` as
    given, or ``in_features // d`` for each of ``divisors`` (default ``[4, 12, 20]``: a Keras
    model's ``n/4, n/12, n/20``, which suits ~120 features); ``out_features`` is the last
    block's width. A divisor width below ``min_width`` is an error (see :func:`block_widths`).

    Args:
        in_features: Width ``n`` of the input.
        divisors: Width divisors of the blocks, narrowing (used when ``widths`` is not given).
        dropout: Dropout probability after each block.
        norm: Normalisation after each ``Linear``: ``"batch"`` (BatchNorm, the default),
            ``"layer"`` (LayerNorm: per sample, so a DDP run without ``sync_batchnorm`` — which
            needs GPUs — computes what one process would) or ``"none"``.
        widths: Explicit block widths, e.g. ``[20, 5, 2]``; excludes ``divisors``.
        min_width: Smallest width a divisor may produce.

    Example:
        >>> import torch
        >>> trunk = DenseTrunk(120)
        >>> [b[0].out_features for b in trunk.blocks], trunk(torch.zeros(4, 120)).shape
        ([30, 10, 6], torch.Size([4, 6]))
        >>> DenseTrunk(20, widths=[20, 10, 5]).out_features
        5
        >>> type(DenseTrunk(120, norm="layer").blocks[0][1]).__name__
        'LayerNorm'
    """

    def __init__(
        self,
        in_features: int,
        divisors: Sequence[int] | None = None,
        dropout: float = 0.1,
        norm: DenseNorm = "batch",
        widths: Sequence[int] | None = None,
        min_width: int = 4,
    ) -> None:
        super().__init__()
        if norm not in ("batch", "layer", "none"):
            raise ValueError(f"norm must be 'batch', 'layer' or 'none', got {norm!r}")
        self.in_features = in_features
        blocks = []
        previous = in_features
        for width in block_widths(in_features, widths, divisors, min_width):
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
