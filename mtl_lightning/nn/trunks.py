"""Shared trunks: plain ``nn.Module``s that expose ``out_features``."""

from __future__ import annotations

from torch import Tensor, nn


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

    Example:
        >>> import torch
        >>> CNNTrunk()(torch.zeros(4, 1, 40, 64)).shape
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
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_features = out_features
        blocks: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(channels):
            blocks += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
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

    def forward(self, x: Tensor) -> Tensor:
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
        return self.project(self.pool(self.features(x)))
