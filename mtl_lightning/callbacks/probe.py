"""`LeakageProbe`: fresh probes on the frozen trunk during and at the end of ``fit``."""

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
from mtl_lightning.summary import epoch_index


class LeakageProbe(pl.Callback):
    """Run the ``probe`` subcommand's measurement when training ends, on the trained model,
    and, with ``every_n_epochs``, at the end of every N-th training epoch, so TensorBoard shows the
    leakage over the epochs beside the attackers' curves.

    Fresh linear and MLP classifiers are trained on the frozen shared representation of the
    whole training split and scored on the whole validation split (balanced accuracy over the
    classes present in the validation targets, 95% bootstrap interval, chance
    ``1 / classes present``); see :mod:`mtl_lightning.probe`. The result is printed,
    written to ``summary.json``'s ``probe`` section in the run directory and logged to
    TensorBoard as ``probe/{task}/{linear|mlp}/balanced_acc|ci_low|ci_high|chance``.

    Under DDP the probe runs on rank zero only, over the full datasets (not its shard), while
    the other ranks wait at a barrier; so every rank leaves ``fit`` together. The final probe
    runs in ``on_train_end``, so :class:`MultiTaskSummary` puts its figures in the table.

    Args:
        tasks: Classification tasks to probe; default: the model's adversarial tasks.
        kinds: Probe classifiers, any of ``"linear"`` and ``"mlp"``.
        n_boot: Bootstrap resamples for the interval.
        print_table: Print the result table (of the final probe).
        every_n_epochs: Also probe at the end of every this many training epochs (after their
            validation; ``0``: at the end only); the values are logged at the step reached.

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
        every_n_epochs: int = 0,
    ) -> None:
        bad = [k for k in kinds if k not in ("linear", "mlp")]
        if bad or not kinds:
            raise ValueError(f"unknown probe kind(s) {bad}; use 'linear' and/or 'mlp'")
        if n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {n_boot}")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be an integer >= 0, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self._probed_at: int | None = None  # the global step of the latest results
        self.tasks = list(tasks) if tasks else None
        self.kinds = tuple(kinds)
        self.n_boot = n_boot
        self.print_table = print_table
        self.results: list[ProbeResult] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # named tasks must exist: fail at the start, not after training; with none named, a
        # model without adversarial tasks (e.g. the speaker made a main task) is not probed
        self._active = bool(self.tasks) or any(t.adversarial for t in pl_module.tasks)
        if stage == "fit" and self._active:
            probe_task_names(pl_module, self.tasks)
        elif stage == "fit" and trainer.is_global_zero:
            print("LeakageProbe: the model has no adversarial task to probe (name --tasks)")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the epoch's validation, outside its inference mode (the probes are trained)
        n = self.every_n_epochs
        if n == 0 or (trainer.current_epoch + 1) % n != 0:
            return
        self._run(trainer, pl_module, final=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, final=True)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, final: bool) -> None:
        if not getattr(self, "_active", True):
            return
        # trainer.log_dir broadcasts under DDP, so every rank asks for it
        log_dir = trainer.log_dir if trainer.loggers else None
        if trainer.is_global_zero:
            if self._probed_at != trainer.global_step:  # not twice on the same model
                self.results = self._probe(trainer, pl_module)
                self._probed_at = trainer.global_step
                self._write(trainer, log_dir if final else None)
            elif final:
                self._write(trainer, log_dir, scalars=False)
            if final and self.print_table:
                print(f"\nLeakage probes on the frozen trunk (epoch {epoch_index(trainer)}):")
                print(format_results(self.results))
        trainer.strategy.barrier("LeakageProbe")

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
        return results

    def _write(self, trainer: pl.Trainer, log_dir: str | None, scalars: bool = True) -> None:
        """TensorBoard scalars (at the current step) and, given ``log_dir``, ``summary.json``."""
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        summary = os.path.join(log_dir, "summary.json") if log_dir else None
        writer = tb.experiment if tb is not None and scalars else None
        write_probe_results(self.results, summary, writer, step=trainer.global_step)
        if writer is not None:
            writer.flush()
