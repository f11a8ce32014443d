"""Checkpointed torchmetrics states across DDP ranks: saved as global sums, split on load.

torchmetrics keeps each rank's unsynced local sums, and only rank zero writes a checkpoint, so a
checkpoint would otherwise hold rank zero's share of every accumulator. Saving the sum over ranks
and loading it on rank zero only (zeros elsewhere) keeps the per-rank sum equal to the saved
global value, whatever the world size of the run that loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_sum

from mtl_lightning.metrics.shared import SharedStates

__all__ = ["checkpointed_metric_keys", "sum_metric_states", "zero_metric_states"]


def _states(metric: Metric) -> Iterator[tuple[str, Metric, str]]:
    """``(key suffix, owner, state)`` of each state ``metric`` checkpoints: its own, and the
    copies of its source's that a shared metric writes (:mod:`~mtl_lightning.metrics.shared`)."""
    for state in metric._defaults:
        yield state, metric, state
    if isinstance(metric, SharedStates):
        for suffix, (owner, state) in metric.shared_states().items():
            yield suffix, owner, state


def checkpointed_metric_keys(
    module: nn.Module, state_dict: MutableMapping[str, Tensor]
) -> list[str]:
    """The ``state_dict`` keys of every torchmetrics state of ``module`` that is checkpointed.

    Raises:
        NotImplementedError: a checkpointed state is not an unsynced sum (it could not be split
            across ranks again).

    Example:
        >>> from mtl_lightning.metrics import ClassCounts
        >>> holder = nn.ModuleDict({"counts": ClassCounts(3)})
        >>> checkpointed_metric_keys(holder, holder.state_dict())
        ['counts.counts']
    """
    keys = []
    for prefix, metric in module.named_modules():
        if not isinstance(metric, Metric):
            continue
        for suffix, owner, state in _states(metric):
            key = f"{prefix}.{suffix}" if prefix else suffix
            if key not in state_dict:  # not persistent: not in the checkpoint
                continue
            if owner._reductions[state] is not dim_zero_sum or owner._is_synced:
                raise NotImplementedError(
                    f"checkpointed metric state {key!r} must be an unsynced tensor with "
                    "dist_reduce_fx='sum' to be merged across ranks"
                )
            keys.append(key)
    return keys


def sum_metric_states(
    module: nn.Module,
    state_dict: MutableMapping[str, Tensor],
    reduce_sum: Callable[[Tensor], Tensor],
) -> None:
    """Replace ``module``'s checkpointed metric states in ``state_dict`` by their sums over ranks.

    ``reduce_sum`` is a collective (every rank must call this, in the same order): one call per
    dtype. The module's own (live) states are not changed.

    Example:
        >>> from mtl_lightning.metrics import ClassCounts
        >>> holder = nn.ModuleDict({"counts": ClassCounts(3)})
        >>> holder["counts"].update(torch.tensor([0, 2, 2]))
        >>> saved = holder.state_dict()
        >>> sum_metric_states(holder, saved, lambda t: 2 * t)  # two ranks holding the same
        >>> saved["counts.counts"].tolist(), holder["counts"].counts.tolist()
        ([2, 0, 4], [1, 0, 2])
    """
    keys = checkpointed_metric_keys(module, state_dict)
    for dtype in sorted({state_dict[k].dtype for k in keys}, key=str):  # same order per rank
        group = [k for k in keys if state_dict[k].dtype == dtype]
        flat = reduce_sum(torch.cat([state_dict[k].reshape(-1) for k in group]))
        sizes = [state_dict[k].numel() for k in group]
        for key, part in zip(group, flat.split(sizes), strict=True):
            state_dict[key] = part.reshape(state_dict[key].shape).clone()


def zero_metric_states(module: nn.Module, state_dict: MutableMapping[str, Tensor]) -> None:
    """Zero ``module``'s checkpointed metric states in ``state_dict`` (ranks other than zero).

    Example:
        >>> from mtl_lightning.metrics import ClassCounts
        >>> holder = nn.ModuleDict({"counts": ClassCounts(2)})
        >>> saved = {"counts.counts": torch.tensor([3, 1])}
        >>> zero_metric_states(holder, saved)
        >>> saved["counts.counts"].tolist()
        [0, 0]
    """
    for key in checkpointed_metric_keys(module, state_dict):
        state_dict[key] = torch.zeros_like(state_dict[key])
