"""`LeakageProbe`: post-hoc probes on the frozen trunk at the end of ``fit`` (opt-in)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from mtl_lightning.probe import (
    ProbeResult,
    format_results,
    probe_model,
    probe_task_names,
    write_probe_results,
)


class LeakageProbe(pl.Callback):
    """Run the ``probe`` subcommand's measurement when ``fit`` ends, on the trained model.

    Fresh linear and MLP classifiers are trained on the frozen shared representation of the
    whole training split and scored on the whole validation split (balanced accuracy over the
    classes present in the validation targets, 95% bootstrap interval, chance
    ``1 / classes present``); see :mod:`mtl_lightning.probe`. The result is printed,
    written to ``summary.json``'s ``probe`` section in the run directory and logged to
    TensorBoard as ``probe/{task}/{linear|mlp}/balanced_acc|ci_low|ci_high|chance``.

    Under DDP the probe runs on rank zero only, over the full datasets (not its shard), while
    the other ranks wait at a barrier; so every rank leaves ``fit`` together.

    Args:
        tasks: Classification tasks to probe; default: the model's adversarial tasks.
        kinds: Probe classifiers, any of ``"linear"`` and ``"mlp"``.
        n_boot: Bootstrap resamples for the interval.
        print_table: Print the result table.

    Example (config)::

        trainer:
          callbacks:
            - class_path: mtl_lightning.callbacks.LeakageProbe
              init_args: {n_boot: 1000}

    Example:
        >>> LeakageProbe(kinds=["linear"], n_boot=200).kinds
        ('linear',)
        >>> LeakageProbe(kinds=["svm"])
        Traceback (most recent call last):
        ...
        ValueError: unknown probe kind(s) ['svm']; use 'linear' and/or 'mlp'
    """

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        kinds: Sequence[str] = ("linear", "mlp"),
        n_boot: int = 1000,
        print_table: bool = True,
    ) -> None:
        bad = [k for k in kinds if k not in ("linear", "mlp")]
        if bad or not kinds:
            raise ValueError(f"unknown probe kind(s) {bad}; use 'linear' and/or 'mlp'")
        if n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {n_boot}")
        self.tasks = list(tasks) if tasks else None
        self.kinds = tuple(kinds)
        self.n_boot = n_boot
        self.print_table = print_table
        self.results: list[ProbeResult] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            probe_task_names(pl_module, self.tasks)  # fail at the start, not after training

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir broadcasts under DDP, so every rank asks for it
        log_dir = trainer.log_dir if trainer.loggers else None
        if trainer.is_global_zero:
            self.results = self._probe(trainer, pl_module)
            self._write(trainer, log_dir)
        trainer.strategy.barrier("LeakageProbe.on_fit_end")

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[ProbeResult]:
        datamodule = trainer.datamodule
        if datamodule is None:
            raise RuntimeError("LeakageProbe needs a datamodule (trainer.fit(model, datamodule))")
        results = probe_model(
            pl_module,
            datamodule.train_dataloader(),
            datamodule.val_dataloader(),
            self.tasks,
            n_boot=self.n_boot,
            kinds=self.kinds,
        )
        if self.print_table:
            print(f"\nLeakage probes on the frozen trunk (epoch {trainer.current_epoch}):")
            print(format_results(results))
        return results

    def _write(self, trainer: pl.Trainer, log_dir: str | None) -> None:
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        summary = os.path.join(log_dir, "summary.json") if log_dir else None
        writer = tb.experiment if tb is not None else None
        write_probe_results(self.results, summary, writer, step=trainer.global_step)
        if writer is not None:
            writer.flush()
