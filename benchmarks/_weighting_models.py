"""The pieces of :mod:`benchmarks.weighting`: its models and data, a ``Trainer.fit`` advanced one
training step per call, and hand loops of LibMTL's loss-weighting formulas.

Two models: the default CNN (``CNNTrunk``, 64-unit heads) on 40x64 inputs, batch 64, K tasks of 5
classes; and the dense five-task model of ``configs/weighting_aggregation.yaml`` (``DenseTrunk``
on ``SyntheticTabularDataModule``, batch 64; K=2 is its first two tasks), as in
:mod:`benchmarks.lightning_overhead` and :mod:`benchmarks.gradient_path`. AdamW (lr 1e-3) for all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from benchmarks._interleave import cycle, timing_trainer
from mtl_lightning import MultiTaskModule
from mtl_lightning.data import SyntheticTabularDataModule, TensorTaskDataset
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.optim import fused_on_cpu
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import StaticWeighting, WeightingStrategy

__all__ = ["Setting", "SteppedFit", "hand_steps", "make_setting"]

# the Trainer's start-up lines ("GPU available: ..."), once per fit: some 60 fits a run
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)

Step = Callable[[], None]


@dataclass
class Setting:
    """One model and task count: its tasks, a fresh training loader per call, and a module per
    weighting strategy (all from the same seed, so the same initial weights)."""

    model: str
    tasks: list[TaskSpec]
    loader: Callable[[], DataLoader]
    trunk: Callable[[], torch.nn.Module | None]
    head_hidden: int

    def module(self, weighting: WeightingStrategy) -> MultiTaskModule:
        torch.manual_seed(0)
        trunk = self.trunk()
        return MultiTaskModule(
            self.tasks, trunk=trunk, head_hidden=self.head_hidden, weighting=weighting
        )


def make_setting(model: str, k: int, tiny: bool = False) -> Setting:
    """``cnn``: K tasks of 5 classes on 16 batches of random 40x64 inputs (batch 64; tiny: 2
    batches of 8), cycled epoch after epoch; ``dense``: the five-task table (K=5) or its first two
    tasks (K=2), 4096 training samples (tiny: 256)."""
    if model == "cnn":
        g = torch.Generator().manual_seed(0)
        batch, n = (8, 16) if tiny else (64, 16 * 64)
        tasks = [TaskSpec(f"t{i}", 5) for i in range(k)]
        targets = {t.name: torch.randint(0, 5, (n,), generator=g) for t in tasks}
        dataset = TensorTaskDataset(torch.randn(n, 1, 40, 64, generator=g), targets)
        return Setting(
            model, tasks, lambda: DataLoader(dataset, batch_size=batch), lambda: None, 64
        )
    if model != "dense" or k not in (2, 5):
        raise ValueError(f"no setting for model {model!r} with K={k}")
    two = {"num_classes": (3, 2), "groups": ((0, 1),), "conflicting": ()} if k == 2 else {}
    data = SyntheticTabularDataModule(n_train=256 if tiny else 4096, n_eval=64, **two)
    data.setup("fit")
    tasks = [TaskSpec(t.name, t.size) for t in data.tasks]
    trunk = lambda: DenseTrunk(data.n_features, divisors=[4, 12, 20], dropout=0.1)  # noqa: E731
    return Setting(model, tasks, data.train_dataloader, trunk, 16)


class _Stop(Exception):
    """Raised at a step's start to end a :class:`SteppedFit` (Lightning tears down, re-raises)."""


class _Gate(pl.Callback):
    def __init__(self, fit: SteppedFit) -> None:
        self.fit = fit

    def on_train_batch_start(self, *args: Any) -> None:
        self.fit._pause()


class SteppedFit:
    """``Trainer.fit`` of ``model`` in a worker thread, paused at the start of every training step.

    Each :meth:`step` runs one whole Trainer step (hooks, the module's training step, its
    optimizer step and post-step hooks, logging, fetching the next batch) and returns when the
    next one is about to start; the calling thread waits meanwhile, so only one fit works at a
    time and this process's CPU time over a :meth:`step` is that step's work. Construction runs
    the fit's set-up up to its first step (not part of any step); :meth:`close` ends it."""

    def __init__(
        self,
        model: pl.LightningModule,
        loader: DataLoader,
        max_steps: int,
        accelerator: str = "cpu",
    ) -> None:
        self._go, self._paused = threading.Semaphore(0), threading.Semaphore(0)
        self._stopping = self._ended = False
        self._error: BaseException | None = None
        # close() stops it at the start of the step after the last
        trainer = timing_trainer(max_steps + 1, [_Gate(self)], accelerator)
        args = (trainer, model, loader, torch.get_num_threads())
        self._thread = threading.Thread(target=self._fit, args=args, daemon=True)
        self._thread.start()
        self._wait()

    def _fit(
        self, trainer: pl.Trainer, model: pl.LightningModule, loader: DataLoader, threads: int
    ) -> None:
        torch.set_num_threads(threads)  # the caller's, in this thread too
        try:
            trainer.fit(model, train_dataloaders=loader)
        except _Stop:
            pass
        except BaseException as error:  # handed to the caller by _wait
            self._error = error
        finally:
            self._ended = True
            self._paused.release()

    def _pause(self) -> None:
        self._paused.release()
        self._go.acquire()
        if self._stopping:
            raise _Stop

    def _wait(self) -> None:
        self._paused.acquire()
        if self._error is not None:
            raise RuntimeError(f"the fit failed: {self._error!r}") from self._error
        if self._ended and not self._stopping:
            raise RuntimeError("the fit ended before close()")

    def step(self) -> None:
        """Run one training step; return when the next is about to start."""
        self._go.release()
        self._wait()

    def close(self) -> None:
        """End the fit (at the start of the step it is paused at) and its thread."""
        if not self._ended:
            self._stopping = True
            self._go.release()
            self._thread.join()


def _hand_loop(setting: Setting, total: Callable[[Tensor], Tensor], extra: list[Tensor]) -> Step:
    """One step function: the module's trunk and heads as a plain ``nn.Module`` (own copy, AdamW
    over it and, without weight decay, ``extra``), the per-task cross-entropies stacked and
    turned into the loss by ``total``; nothing logged, no check."""
    model = setting.module(StaticWeighting()).train()
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    optimizer = fused_on_cpu(torch.optim.AdamW(groups, lr=1e-3))  # as the module's
    names = [t.name for t in setting.tasks]
    batches = cycle(setting.loader())

    def step() -> None:
        batch = next(batches)
        outputs = model(batch["features"])
        losses = torch.stack([F.cross_entropy(outputs[n], batch["targets"][n]) for n in names])
        optimizer.zero_grad(set_to_none=True)
        total(losses).backward()
        optimizer.step()

    return step


def hand_steps(setting: Setting) -> dict[str, Step]:
    """Hand loops: the plain sum, and LibMTL's formulas (``LibMTL/weighting/UW.py``, ``RLW.py``):

    - uncertainty weighting (Kendall et al. 2018): ``sum_k L_k / (2 exp(s_k)) + s_k / 2``,
      learned ``s`` from -0.5 (LibMTL's form for every task; the package's
      :func:`~mtl_lightning.weighting.uncertainty.uncertainty_total` uses ``L_k / exp(s_k)`` for
      classification, the paper's eq. 10: the same work);
    - random loss weighting (Lin et al. 2021): ``sum_k softmax(z)_k L_k``, ``z ~ N(0, I)`` drawn
      each step (the package scales the weights by K).
    """
    k = len(setting.tasks)
    log_vars = torch.full((k,), -0.5, requires_grad=True)
    return {
        "plain sum": _hand_loop(setting, torch.sum, []),
        "uncertainty": _hand_loop(
            setting, lambda losses: (losses / (2 * log_vars.exp()) + log_vars / 2).sum(), [log_vars]
        ),
        "RLW": _hand_loop(
            setting, lambda losses: (torch.softmax(torch.randn(k), 0) * losses).sum(), []
        ),
    }
