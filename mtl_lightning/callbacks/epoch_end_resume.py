"""`EpochEndResume`: exact resume from a checkpoint written on an epoch's last training batch.

Lightning (2.5 to at least 2.6.6) writes ``ModelCheckpoint(every_n_train_steps=...)``
checkpoints in ``on_train_batch_end``, before the batch counts as completed (upstream issue
https://github.com/Lightning-AI/pytorch-lightning/issues/18060, also #19815). Since
https://github.com/Lightning-AI/pytorch-lightning/pull/20379 (the fix of issue #14579) a
restore from such a checkpoint taken on the *last* batch of an epoch marks the whole epoch
done (``_FitLoop.reset``: ``restarted_on_train_batch_end and restarted_mid_epoch and
is_last_batch``): the resumed run skips that epoch's validation, its ``on_train_epoch_end``
hooks and the next epoch's ``on_train_epoch_start``, and leaves the epoch counters
inconsistent (a second resume trains extra steps). The epoch-end save of the same
``ModelCheckpoint`` is skipped as well (same global step), so such a checkpoint stays the
newest one until the next step checkpoint: any kill in that window resumes from it.

This callback repairs the restored loop state so the resumed run goes on exactly where the
checkpoint was taken: the end of the last batch, then validation (if due), the epoch-end hooks
and the next epoch's start, as in a run that was never interrupted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

_BATCHES = "epoch_loop.batch_progress"
_EPOCHS = "epoch_progress"


def _at_batch_end(counts: Mapping[str, int]) -> bool:
    """The counters of a batch that ran to ``on_train_batch_end`` but is not completed."""
    ready, started, processed = counts["ready"], counts["started"], counts["processed"]
    return ready == started == processed == counts["completed"] + 1


def is_last_batch_checkpoint(loops: Mapping[str, Any]) -> bool:
    """Whether ``checkpoint["loops"]`` was taken in ``on_train_batch_end`` of an epoch's last batch.

    That is: the batch ran (ready, started, processed) but is not completed, it is the last of
    the epoch, and the epoch has started but is not processed (its end hooks have not run).

    Example:
        >>> batch = {"ready": 12, "started": 12, "processed": 12, "completed": 11}
        >>> epoch = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
        >>> loops = {"fit_loop": {"epoch_progress": {"total": epoch, "current": epoch},
        ...     "epoch_loop.batch_progress": {"total": batch, "current": batch,
        ...                                   "is_last_batch": True}}}
        >>> is_last_batch_checkpoint(loops)
        True
        >>> loops["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] = False  # mid-epoch
        >>> is_last_batch_checkpoint(loops)
        False
    """
    fit_loop = loops.get("fit_loop") or {}
    batches, epochs = fit_loop.get(_BATCHES), fit_loop.get(_EPOCHS)
    if not batches or not epochs or not batches.get("is_last_batch"):
        return False
    if not (_at_batch_end(batches["total"]) and _at_batch_end(batches["current"])):
        return False
    epoch = epochs["total"]
    return epoch["ready"] == epoch["started"] == epoch["processed"] + 1 == epoch["completed"] + 1


def _lightning_supported(trainer: pl.Trainer) -> bool:
    """The loop internals this repair relies on (Lightning >= 2.5, the restart stages)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    val_loop = epoch_loop.val_loop
    return all(
        hasattr(obj, name)
        for obj, name in (
            (epoch_loop, "restarted_on_last"),
            (epoch_loop, "_should_check_val_fx"),
            (epoch_loop, "_batches_that_stepped"),
            (epoch_loop, "reset_restart_stage"),
            (val_loop, "restarted_mid_evaluation"),
            (val_loop, "update_restart_stage"),
            (val_loop, "_has_run"),
            (trainer.fit_loop, "_data_fetcher"),
        )
    )


def _reenter_validation(val_loop: Any) -> None:
    """Flag the validation loop as interrupted before its first batch.

    The epoch loop then runs it (in full) after the restored batch instead of skipping it. Only
    the restart stage is kept: the counters go back to their saved values, so checkpoints
    written later hold exactly an uninterrupted run's counters.
    """
    val_loop.batch_progress.reset_on_run()  # the previous validation's counts: start afresh
    total = val_loop.batch_progress.total
    total.ready, total.started = total.ready + 1, total.started + 1
    val_loop.update_restart_stage()
    total.ready, total.started = total.ready - 1, total.started - 1
    if not val_loop.restarted_mid_evaluation:  # pragma: no cover - other Lightning versions
        rank_zero_warn("EpochEndResume: could not re-enter the pending validation; it is skipped.")


class EpochEndResume(pl.Callback):
    """Resume exactly from a checkpoint written on the last training batch of an epoch.

    Works around the Lightning restore of such checkpoints (see the module docstring: upstream
    issues #18060 and #14579 / PR #20379), which skips the epoch's validation and epoch-end
    hooks. Two steps, both no-ops for any other checkpoint:

    1. ``on_load_checkpoint`` (before Lightning restores the loops) marks the last batch
       completed, as it is once ``on_train_batch_end`` returns: Lightning then resumes *within*
       the epoch, after that batch, instead of declaring the epoch finished.
    2. ``on_train_start`` lets the epoch loop finish that batch: if validation is due after it
       (asked of Lightning's own ``_should_check_val_fx``), the validation loop is flagged as
       interrupted at its start so it runs in full; otherwise the epoch loop is flagged done
       (and its logging step advanced, as the skipped batch end would have). Then the epoch-end
       hooks and the next epoch's start run as in an uninterrupted run.

    Plateau schedulers with ``interval="step"`` are not stepped again for that batch (Lightning
    never does so on a restart: the metrics are not in the checkpoint). The CLI always adds
    this callback; with a plain ``Trainer`` pass it in ``callbacks``.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[EpochEndResume()], logger=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> any(isinstance(c, EpochEndResume) for c in trainer.callbacks)
        True
    """

    def __init__(self) -> None:
        self._pending = False  # the loaded checkpoint was repaired; finish it at train start
        self._end_restart = False  # clear the epoch loop's restart flags at the epoch end

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        loops = checkpoint.get("loops") if trainer.state.fn == TrainerFn.FITTING else None
        if not loops or not is_last_batch_checkpoint(loops):
            return
        if not _lightning_supported(trainer):
            rank_zero_warn(
                "EpochEndResume: this Lightning version's loops differ from the ones it repairs;"
                " resuming from a checkpoint of an epoch's last batch may skip the epoch end."
            )
            return
        batches = loops["fit_loop"][_BATCHES]
        for counts in (batches["total"], batches["current"]):
            counts["completed"] += 1
        self._pending = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._pending:
            return
        self._pending = False
        fit_loop = trainer.fit_loop
        fetcher = fit_loop._data_fetcher
        assert fetcher is not None  # set up before the fit loop starts
        # the very test the epoch loop makes next, on the same (restored) state
        if fit_loop.epoch_loop._should_check_val_fx(fetcher):
            _reenter_validation(fit_loop.epoch_loop.val_loop)
            what = "its validation, "
        else:  # no validation after this batch: the epoch loop is done without another batch
            fit_loop.epoch_loop.val_loop._has_run = True
            fit_loop.epoch_loop._batches_that_stepped += 1  # what the batch end would have counted
            self._end_restart = True
            what = ""
        rank_zero_info(
            f"EpochEndResume: the checkpoint was written on the last batch of epoch"
            f" {trainer.current_epoch}; running {what}its epoch end and the next epoch's start"
            " (Lightning issue #18060 / PR #20379)."
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._end_restart:  # the epoch loop ran no iteration that would clear these
            self._end_restart = False
            epoch_loop = trainer.fit_loop.epoch_loop
            epoch_loop.restarting = False
            epoch_loop.reset_restart_stage()
