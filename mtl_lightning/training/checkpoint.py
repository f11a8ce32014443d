"""The checkpointed training accumulators across DDP ranks: every metric state
(:class:`~mtl_lightning.training.StageMetrics`, the attackers' metrics) and every eraser's running
sums, saved as their global sums and split again on load
(:mod:`mtl_lightning.metrics.rank_states`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtl_lightning.metrics.rank_states import sum_metric_states, zero_metric_states

if TYPE_CHECKING:
    from mtl_lightning.module import MultiTaskModule

__all__ = ["save_global_states", "split_global_states"]


def save_global_states(
    host: MultiTaskModule, checkpoint: dict[str, Any], reduce_sum: Callable[[Tensor], Tensor]
) -> None:
    """Write the *global* training accumulators into ``checkpoint``: each checkpointed metric
    state and eraser statistic summed over DDP ranks by ``reduce_sum`` (a collective: call it
    on every rank)."""
    sum_metric_states(host, checkpoint["state_dict"], reduce_sum)
    host._sum_eraser_statistics(checkpoint["state_dict"], reduce_sum)


def split_global_states(host: MultiTaskModule, checkpoint: dict[str, Any]) -> None:
    """Zero the saved global accumulators in ``checkpoint`` (on every rank but zero, before the
    state dict is loaded): the states are summed across ranks when computed, so the loaded
    states add up to the saved global sums whatever the world size now."""
    zero_metric_states(host, checkpoint["state_dict"])
    host._sum_eraser_statistics(checkpoint["state_dict"], torch.zeros_like)
