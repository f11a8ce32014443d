"""Metrics computed from another metric's states: several logged values, one accumulator.

A task's ``acc``, ``balanced_acc`` and ``f1`` all reduce one confusion matrix, and its
``f1_micro`` and ``f1_macro`` one set of per-label counts. Lightning logs each value as its own
torchmetrics object, so each needs a :class:`~torchmetrics.Metric`; a :class:`SharedStates` metric
is one without a state of its own. It reads its *source*'s states (summed across DDP ranks when
computed, as the source's own ``compute`` does), its update is a no-op (the source's update counts
the batch) and it is reset with its source: only the source is updated on a step.

Checkpoints keep the layout of one state copy per metric: a shared metric writes its source's
states under its own keys (a state dict has the keys it had when every metric kept a copy, so old
checkpoints load strictly), skips them on load (the source loads its own), and
:mod:`~mtl_lightning.metrics.rank_states` sums them across ranks with the source's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from copy import deepcopy
from typing import Any, ClassVar

from torch import Tensor
from torchmetrics import Metric

__all__ = ["SharedStates", "shared_state", "synced"]


def synced(metric: Metric) -> AbstractContextManager[None]:
    """A context in which ``metric``'s states are summed over DDP ranks, as in its own
    ``compute`` (nothing to do in one process, or when the states are synced already)."""
    if metric._is_synced:
        return contextlib.nullcontext()
    return metric.sync_context(
        dist_sync_fn=metric.dist_sync_fn,
        should_sync=metric._to_sync,
        should_unsync=metric._should_unsync,
    )


def shared_state(name: str) -> Any:
    """A read-only attribute: the source's state ``name`` (for a :class:`SharedStates` class)."""

    def read(self: SharedStates) -> Tensor:
        return getattr(self._source, name)

    return property(read, doc=f"The source's ``{name}`` state.")


class SharedStates(Metric):
    """Base of a metric computed from its ``source``'s states named in :attr:`shared`.

    Put it first among the bases, before the metric class whose ``compute`` it reuses, and
    declare each shared name as :func:`shared_state`; the subclass's ``__init__`` copies the
    settings that ``compute`` reads. The source must own the states (and be updated).
    """

    #: the names of the source's states that this metric reads
    shared: ClassVar[tuple[str, ...]] = ()
    _source: Metric

    def __init__(self, source: Metric, **kwargs: Any) -> None:
        # not the reused class's __init__, which would add states; nothing to cache either:
        # the source changes without this metric's update
        Metric.__init__(self, **{**kwargs, "compute_with_cache": False})
        missing = [name for name in self.shared if name not in source._defaults]
        if missing or isinstance(source, SharedStates):
            raise ValueError(f"the source {type(source).__name__} must own the states {missing}")
        object.__setattr__(self, "_source", source)  # not a child module: no second state

    @property
    def source(self) -> Metric:
        """The metric whose states this one reads."""
        return self._source

    @property  # type: ignore[override]
    def _update_count(self) -> int:
        """The source's update count (compute warns, and Lightning checks, before an update)."""
        source = self.__dict__.get("_source")
        return 0 if source is None else source._update_count

    @_update_count.setter
    def _update_count(self, value: int) -> None:
        """Ignored: the count is the source's."""

    def shared_states(self) -> Mapping[str, tuple[Metric, str]]:
        """``{key suffix: (source, its state)}`` of the states this metric checkpoints."""
        return {name: (self._source, name) for name in self.shared}

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to add: the source's update counts the batch (a MetricCollection's update
        reaches every member)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: the metric has no batch state of its own; log its epoch value."""
        raise NotImplementedError(f"{type(self).__name__} reads its source's states: no forward")

    def compute(self) -> Any:
        """The reused class's ``compute`` on the source's states, summed over ranks."""
        with synced(self._source):
            return super().compute()

    def state_dict(  # type: ignore[override]
        self, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> Any:
        """The module's state dict, with a copy of each shared state the source checkpoints."""
        destination = super().state_dict(
            destination=destination, prefix=prefix, keep_vars=keep_vars
        )
        for name in self.shared:
            if self._source._persistent[name]:
                value = getattr(self._source, name)
                destination[prefix + name] = deepcopy(value if keep_vars else value.detach())
        return destination

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in self.shared:  # the source loads its own copy
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args)
