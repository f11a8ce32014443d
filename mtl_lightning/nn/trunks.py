"""Shared trunks: plain ``nn.Module``s that expose ``out_features``."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn


def masked_time_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Mean of ``x`` (``[batch, channels, freq, frames]``) over each row's first ``lengths[i]``
    frames, as ``[batch, channels, freq, 1]`` in ``x``'s dtype.

    Summed and divided in float32: in bf16 (under bf16-mixed) both a sum and a frame count
    above 256 would be rounded (257 -> 256) before the division.

    Example:
        >>> x = torch.arange(6.0).reshape(1, 1, 1, 6)
        >>> masked_time_mean(x, torch.tensor([4])).flatten()
        tensor([1.5000])
    """
    valid = torch.arange(x.shape[-1], device=x.device) < lengths[:, None]
    summed = (x.float() * valid[:, None, None, :]).sum(dim=-1, keepdim=True)
    return (summed / lengths[:, None, None, None]).to(x.dtype)


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, width), width)
    return nn.Identity()


class CNNTrunk(nn.Module):
    """Small 2-D CNN over ``[batch, 1, n_mels, frames]`` feature maps -> ``[batch, out_features]``.

    Three ``conv3x3 -> BatchNorm -> ReLU -> pool`` blocks, average pooling over time into
    ``freq_bins`` frequency bands (so *where* in the spectrum energy sits survives, as it does in
    audio CNNs) and a linear projection. ``[batch, n_mels, frames]`` input gets a channel axis.

    Args:
        in_channels: Channels of the feature map (1 for a log-mel spectrogram).
        channels: Output channels of the three conv blocks.
        out_features: Size of the shared embedding.
        freq_bins: Frequency bands kept by the final pooling (1 = global average pooling).
        dropout: Dropout before the projection.
        layer_norm: End with ``LayerNorm`` so the embedding's scale is bounded (this keeps a
            gradient-reversed adversary from winning by inflating the features).
        norm: Normalisation after each convolution: ``"batch"`` (BatchNorm, the default),
            ``"group"`` (GroupNorm, up to 8 groups: per sample, so a DDP run without
            ``sync_batchnorm`` — which needs GPUs — computes what one process would) or
            ``"none"``.

    With ``mask`` (``[batch, frames]`` bool, True = a real frame, as padded batches of whole
    utterances carry), padded frames are zeroed before every convolution (so the first padded
    frame looks like the convolution's own zero padding), each pool keeps the frames whose whole
    window is real, and the time average covers real frames only: in ``eval()`` mode an
    utterance's embedding does not depend on how much padding its batch added. (In training,
    BatchNorm's batch statistics still see the zeroed padding.)

    Example:
        >>> import torch
        >>> CNNTrunk()(torch.zeros(4, 1, 40, 64)).shape
        torch.Size([4, 128])
        >>> mask = torch.arange(64) < torch.tensor([[64], [40], [20], [8]])
        >>> CNNTrunk()(torch.zeros(4, 1, 40, 64), mask=mask).shape
        torch.Size([4, 128])
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, int, int] = (16, 32, 64),
        out_features: int = 128,
        freq_bins: int = 8,
        dropout: float = 0.1,
        layer_norm: bool = True,
        norm: Literal["batch", "group", "none"] = "batch",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "group", "none"):
            raise ValueError(f"norm must be 'batch', 'group' or 'none', got {norm!r}")
        self.in_channels = in_channels
        self.out_features = out_features
        blocks: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(channels):
            blocks += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                _norm(norm, width),
                nn.ReLU(inplace=True),
            ]
            if i < len(channels) - 1:
                blocks.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d((freq_bins, 1))
        self.project = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(previous * freq_bins, out_features),
            nn.LayerNorm(out_features) if layer_norm else nn.Identity(),
        )
        self._min_size = 2 ** (len(channels) - 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CNNTrunk expects features of shape [batch, {self.in_channels}, n_mels, frames] "
                f"(or [batch, n_mels, frames]), got {list(x.shape)}"
            )
        if x.shape[-2] < self._min_size or x.shape[-1] < self._min_size:
            raise ValueError(
                f"CNNTrunk needs n_mels and frames >= {self._min_size}, got {list(x.shape[-2:])}"
            )
        if mask is None:
            return self.project(self.pool(self.features(x)))
        return self.project(self._masked_pool(x, mask))

    def _masked_pool(self, x: Tensor, mask: Tensor) -> Tensor:
        """The conv stack on real frames only, then a mean over the real frames of each row."""
        if mask.shape != (x.shape[0], x.shape[-1]) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor [batch, frames] = {[x.shape[0], x.shape[-1]]}, "
                f"got {mask.dtype} {list(mask.shape)}"
            )
        lengths = mask.sum(dim=1)
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                x = x * (torch.arange(x.shape[-1], device=x.device) < lengths[:, None])[
                    :, None, None, :
                ].to(x.dtype)
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                lengths = torch.div(lengths, 2, rounding_mode="floor")
        lengths = lengths.clamp_min(1)  # an utterance shorter than the pools keeps one frame
        x = nn.functional.adaptive_avg_pool2d(x, (self.pool.output_size[0], x.shape[-1]))
        return masked_time_mean(x, lengths)
