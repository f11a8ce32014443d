"""`MultiTaskSummary`: TensorBoard layout and HParams, final per-task table and ``summary.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from mtl_lightning.callbacks.run_hparams import (
    cli_config,
    fallback_hparams,
    log_hparams_session,
    run_hparams,
)
from mtl_lightning.callbacks.tensorboard_layout import STAGES, tensorboard_layout
from mtl_lightning.summary import (
    add_probe_results,
    checkpoint_provenance,
    epoch_index,
    format_table,
    task_results,
    training_summary_path,
    update_summary,
)

__all__ = ["MultiTaskSummary", "checkpoint_paths", "tensorboard_layout"]


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def checkpoint_paths(trainer: pl.Trainer) -> dict[str, str | None]:
    """``best_checkpoint`` and ``last_checkpoint`` over every ``ModelCheckpoint`` (the first
    that has one; None when none has)."""
    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    best = next((c.best_model_path for c in callbacks if c.best_model_path), None)
    last = next((c.last_model_path for c in callbacks if c.last_model_path), None)
    return {"best_checkpoint": best, "last_checkpoint": last}


def _stage_payload(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    stage: str,
    rows: list[dict[str, Any]],
    log_dir: str | None,
) -> dict[str, Any]:
    """The ``summary.json`` section of a stage: where the weights came from, loss, tasks."""
    metrics = trainer.callback_metrics
    loss = float(metrics[f"{stage}/loss"]) if f"{stage}/loss" in metrics else None
    if trainer.state.fn == TrainerFn.FITTING:
        return {
            "epoch": epoch_index(trainer),  # as the progress bar and the checkpoints count
            "epochs_completed": trainer.current_epoch,
            "global_step": trainer.global_step,
            "loss": loss,
            "tasks": rows,
            "grl_lambda": float(getattr(pl_module, "grl_lambda", float("nan"))),
            **checkpoint_paths(trainer),
        }
    # validate / test: a fresh trainer only loaded the weights; the file knows their epoch
    payload = checkpoint_provenance(trainer.ckpt_path)
    if payload["checkpoint"] is None:  # the weights in memory (e.g. right after fit)
        payload |= {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
    return payload | {"log_dir": log_dir, "loss": loss, "tasks": rows}


class MultiTaskSummary(pl.Callback):
    """Write the run's per-task results and set up its TensorBoard dashboards.

    At fit start (rank zero): the custom-scalars layout that puts each task's accuracy, balanced
    accuracy and chance line in one chart. At fit end: prints the per-task table (task, role, val
    accuracy, balanced accuracy, chance, labelled samples, verdict), writes it to
    ``summary.json`` in the run directory (section ``val``, with the best and last checkpoints of
    every ``ModelCheckpoint``) and logs the hyperparameters with the final metrics to the
    HParams tab. ``test`` and ``validate`` write sections ``test`` / ``validate`` naming the
    checkpoint (``trainer.ckpt_path``) and its epoch and global step (read from the file, as
    Lightning stored them: a ``last.ckpt`` saved at the validation of epoch index 1 says epoch
    1 where fit's section, counting completed epochs, says 2;
    :func:`~mtl_lightning.summary.checkpoint_provenance`), to their own run directory and to
    the training run's ``summary.json`` when the checkpoint sits in ``<run>/checkpoints/``;
    the console says where they went.
    Without a checkpoint (the weights in memory) ``checkpoint`` is null and the epoch and step
    are the trainer's.

    Args:
        print_table: Print the table to stdout.
    """

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table
        self._tags: set[str] = set()  # the scalar tags logged so far (rank zero)
        self._layout: dict[str, Any] | None = None  # the Custom Scalars layout written last

    @staticmethod
    def summary_path(trainer: pl.Trainer) -> str | None:
        """``summary.json`` in the run directory, or None without a logger."""
        return os.path.join(trainer.log_dir, "summary.json") if trainer.log_dir else None

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tags, self._layout = set(), None
        self._write_layout(trainer, pl_module, expected=("train", "val"))

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_layout(trainer, pl_module)  # the sections of the tags logged so far

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir broadcasts under DDP, so every rank asks for it; only rank zero writes
        self._report(trainer, pl_module, "val", "val", self.summary_path(trainer))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._report(trainer, pl_module, "val", "validate", self.summary_path(trainer))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test", "test", self.summary_path(trainer))

    @rank_zero_only
    def _report(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        section: str,
        path: str | None,
    ) -> None:
        if not hasattr(pl_module, "tasks") or trainer.sanity_checking:
            return
        rows = task_results(pl_module.tasks, dict(trainer.callback_metrics), stage)
        if section == "val":  # the figures of a LeakageProbe that ran when training ended
            probes = [r for c in trainer.callbacks for r in getattr(c, "results", None) or []]
            add_probe_results(rows, [r for r in probes if hasattr(r, "probe")])
        log_dir = os.path.dirname(path) if path else None
        payload = _stage_payload(trainer, pl_module, stage, rows, log_dir)
        if self.print_table:
            source = f", {payload['checkpoint']}" if payload.get("checkpoint") else ""
            where = f"epoch {payload['epoch']}, global step {payload['global_step']}{source}"
            print(f"\nPer-task results ({section}, {where}):")
            print(format_table(rows, stage))
        if path is not None:
            update_summary(path, section, payload)
            if self.print_table:
                print(f"summary written to {path}")
        run = training_summary_path(payload.get("checkpoint"))
        own = Path(path).resolve() if path else None
        if section != "val" and run is not None and run.parent.is_dir() and run.resolve() != own:
            update_summary(run, section, payload)
            if self.print_table:
                print(f"{section} results added to the training run's summary {run}")
        self._write_layout(trainer, pl_module)
        tb = _tensorboard(trainer)
        if tb is not None and section == "val":
            config = cli_config(trainer) or fallback_hparams(trainer, pl_module)
            adversaries = getattr(pl_module, "adversaries", None) or {}
            objectives = {name: str(a.kind) for name, a in adversaries.items()}
            params = run_hparams(config, pl_module.tasks, objectives)
            log_hparams_session(tb, params, _hp_metrics(rows), trainer.global_step)

    def _write_layout(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, expected: tuple[str, ...] = ()
    ) -> None:
        """(Re)write the Custom Scalars layout: the sections of the stages that ran and of the
        tags logged so far (kept over fit, validate and test with the same callback); the
        newest layout of a run is the one TensorBoard shows."""
        tb = _tensorboard(trainer)
        if tb is None or not hasattr(pl_module, "tasks"):
            return
        self._tags |= set(trainer.callback_metrics)
        ran = {s for s in STAGES if any(t.startswith(f"{s}/") for t in self._tags)}
        layout = tensorboard_layout(pl_module.tasks, ran | set(expected), self._tags)
        if layout != self._layout:
            tb.experiment.add_custom_scalars(layout)
            self._layout = layout


def _hp_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {
        f"hp/{r['task']}/{key}": r[key]
        for r in rows
        for key in ("acc", "balanced_acc", "mse", "f1_macro")
        if key in r and r[key] == r[key]
    }
