"""The weighting-strategy interface: per-task losses in, a total loss and its weights out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from mtl_lightning.tasks import TaskSpec


class WeightingStrategy(nn.Module):
    """Turns per-task losses into one total and reports the weights it applied.

    A strategy never reads attributes of the model that hosts it; everything it needs is
    passed in. Stateful strategies keep their state in buffers or parameters so it
    checkpoints through ``state_dict``.

    Subclasses implement :meth:`forward` and set :attr:`last_weights`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_weights: dict[str, float] = {}

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        """Called once by the host with the task list, before training."""

    def forward(
        self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]
    ) -> Tensor:  # pragma: no cover - abstract
        """Total loss from ``losses`` (keyed by task name); ``tasks`` as the host has them now."""
        raise NotImplementedError
