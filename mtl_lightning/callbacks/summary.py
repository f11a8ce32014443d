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

from mtl_lightning.summary import (
    add_probe_results,
    checkpoint_provenance,
    format_table,
    task_results,
    training_summary_path,
    update_summary,
)
from mtl_lightning.tasks import TaskSpec


def tensorboard_layout(tasks: list[TaskSpec]) -> dict[str, dict[str, list[Any]]]:
    """Custom-scalars layout: per task and stage, accuracy, balanced accuracy and chance together
    (a multilabel task: its F1 scores and exact match beside its baseline).

    Example:
        >>> layout = tensorboard_layout([TaskSpec("emotion", 5)])
        >>> layout["val: accuracy vs chance"]["emotion"][1][:3]
        ['val/emotion/acc', 'val/emotion/balanced_acc', 'val/emotion/chance']
        >>> tensorboard_layout([TaskSpec("tags", 3, kind="multilabel")])["val: accuracy vs chance"]
        {'tags': ['Multiline', ['val/tags/f1_micro', 'val/tags/f1_macro', 'val/tags/exact_match', 'val/tags/baseline']]}
    """
    layout: dict[str, dict[str, list[Any]]] = {}
    for stage in ("val", "train", "test"):
        charts: dict[str, list[Any]] = {}
        for t in tasks:
            keys = {
                "classification": ("acc", "balanced_acc", "chance", "majority"),
                "multilabel": ("f1_micro", "f1_macro", "exact_match", "baseline"),
            }.get(t.kind, ("mse", "mae"))
            tags = [f"{stage}/{t.name}/{k}" for k in keys]
            charts[t.name] = ["Multiline", tags]
        layout[f"{stage}: accuracy vs chance"] = charts
    layout["losses"] = {
        "total": ["Multiline", ["train/loss_epoch", "val/loss", "test/loss"]],
        **{
            t.name: ["Multiline", [f"{s}/{t.name}/loss" for s in ("train", "val", "test")]]
            for t in tasks
        },
    }
    layout["adversary"] = {
        "lambda (adversary strength, train/grl_lambda)": ["Multiline", ["train/grl_lambda"]]
    }
    for t in tasks:
        if t.adversarial and t.is_classification:  # the worst case beside the fresh probes
            layout["adversary"][f"{t.name}: attackers vs probes vs chance"] = [
                "Multiline",
                [
                    f"val/{t.name}/balanced_acc",
                    f"val/{t.name}/attacker/.*/balanced_acc",
                    f"probe/{t.name}/.*/balanced_acc",
                    f"val/{t.name}/chance",
                ],
            ]
    return layout


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _flat_hparams(pl_module: pl.LightningModule) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in dict(pl_module.hparams).items():
        if key == "tasks":
            for item in value:
                spec = item if isinstance(item, dict) else item.to_dict()
                params[f"task/{spec['name']}"] = (
                    f"{spec['role']} {spec['kind']} K={spec['size']} w={spec['weight']}"
                )
        elif isinstance(value, (int, float, str, bool)):
            params[key] = value
        else:
            params[key] = str(value)
    return params


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
            "epoch": trainer.current_epoch,
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

    @staticmethod
    def summary_path(trainer: pl.Trainer) -> str | None:
        """``summary.json`` in the run directory, or None without a logger."""
        return os.path.join(trainer.log_dir, "summary.json") if trainer.log_dir else None

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tb = _tensorboard(trainer)
        if tb is not None and hasattr(pl_module, "tasks"):
            tb.experiment.add_custom_scalars(tensorboard_layout(pl_module.tasks))

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
        tb = _tensorboard(trainer)
        if tb is not None and section == "val":
            tb.log_hyperparams(_flat_hparams(pl_module), _hp_metrics(rows))


def _hp_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {
        f"hp/{r['task']}/{key}": r[key]
        for r in rows
        for key in ("acc", "balanced_acc", "mse", "f1_macro")
        if key in r and r[key] == r[key]
    }
