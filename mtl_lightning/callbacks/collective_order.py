"""`EpochMetricsSync`: every rank computes the epoch's logged metrics at the same moment.

The rule this enforces (see CONTRIBUTING.md, "Collectives under DDP"): **a collective is never
called from a code path that only some ranks take, and the order of collectives is the same on
every rank.** Computing an epoch-level logged value is a collective: a torchmetrics ``Metric``
gathers its states, a ``self.log(..., sync_dist=True)`` value is all-reduced. Lightning computes
them lazily, on the first read, and caches the result. The progress bar reads them at the end of
a training epoch *on rank zero only* (the other ranks' bars are disabled), so without this
callback rank zero runs those collectives inside ``TQDMProgressBar.on_train_epoch_end`` while the
other ranks run them later, in the logger connector: any collective in between (an
``all_reduce`` in ``LightningModule.on_train_epoch_end``, a ``Metric.compute()`` there, a
callback's reduction) pairs with a different collective on each rank, and the run hangs or, worse,
mixes tensors.

This callback reads ``trainer.callback_metrics`` (which computes every epoch-level value logged
so far) on every rank in each epoch-end hook, placed *immediately before the progress bar*, so
the bar (on rank zero) finds every value cached and calls no collective. Values logged later (by
the callbacks after it, the LightningModule's hook) are computed by the logger connector on every
rank, in the same order. :class:`~mtl_lightning.MultiTaskModule` places it in its ``setup`` hook,
so a plain ``Trainer`` gets it too.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar

__all__ = ["EpochMetricsSync", "log_replicated", "place_metrics_sync"]


class EpochMetricsSync(pl.Callback):
    """Compute the epoch's logged metrics on every rank before any other epoch-end hook runs.

    A no-op in one process. Harmless to add twice (the second finds everything cached).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(logger=False, enable_checkpointing=False,
        ...                   enable_progress_bar=True, enable_model_summary=False)
        >>> place_metrics_sync(trainer)
        >>> [type(c).__name__ for c in trainer.callbacks]
        ['EpochMetricsSync', 'TQDMProgressBar']
    """

    def _compute(self, trainer: pl.Trainer) -> None:
        if trainer.world_size > 1:
            trainer.callback_metrics  # noqa: B018  (computes and caches every epoch value)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compute(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compute(trainer)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compute(trainer)


def place_metrics_sync(trainer: pl.Trainer) -> None:
    """Put one :class:`EpochMetricsSync` right before the trainer's progress bar (or first).

    Idempotent: an existing instance is moved, not duplicated.
    """
    existing = [c for c in trainer.callbacks if isinstance(c, EpochMetricsSync)]
    sync = existing[0] if existing else EpochMetricsSync()
    callbacks = [c for c in trainer.callbacks if not isinstance(c, EpochMetricsSync)]
    bars = [i for i, c in enumerate(callbacks) if isinstance(c, ProgressBar)]
    callbacks.insert(bars[0] if bars else 0, sync)
    trainer.callbacks = callbacks


def log_replicated(
    module: pl.LightningModule, name: str, value: Any, prog_bar: bool = False
) -> None:
    """``module.log`` an epoch value that is identical on every rank by construction.

    (A constant such as a chance rate, a count reduced over ranks, or a value computed from
    reduced statistics.) It is still synchronised, with ``max``: exact for identical values, one
    small all-reduce at the epoch's end, in Lightning's own (rank-ordered) metric computation;
    without ``sync_dist`` Lightning warns that an epoch value is not synchronised.
    """
    module.log(
        name, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max",
        prog_bar=prog_bar,
    )  # fmt: skip
