"""Task heads: plain ``nn.Module``s mapping the shared embedding to a task's outputs."""

from __future__ import annotations

from torch import Tensor, nn


class MLPHead(nn.Module):
    """``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``; ``hidden=0`` gives a linear head.

    Example:
        >>> import torch
        >>> MLPHead(128, 5, hidden=64)(torch.zeros(2, 128)).shape
        torch.Size([2, 5])
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 64) -> None:
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features)
            )
        else:
            self.net = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
