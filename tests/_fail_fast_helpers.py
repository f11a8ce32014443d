"""Test-only callbacks for tests/test_fail_fast.py (imported by the CLI subprocesses).

Each rank writes ``rank{R}.pid`` (its pid) when training starts and ``rank{R}.step`` (the
global step) before every training batch, so a test can tell when a run is mid-training and
which process is which rank.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist


def _write(name: str, text: str) -> None:
    """Write ``name`` whole or not at all (a test polls it)."""
    tmp = Path(f".{name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, name)


class SlowSteps(pl.Callback):
    """Sleep ``seconds`` before every training batch (a run long enough to interrupt)."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _write(f"rank{trainer.global_rank}.pid", str(os.getpid()))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        _write(f"rank{trainer.global_rank}.step", str(trainer.global_step))
        time.sleep(self.seconds)


class StuckCollective(SlowSteps):
    """At global step ``step``, rank ``rank`` enters an all-reduce that the others never call:
    they sleep (in Python) instead, forever. Writes ``stuck`` once the ranks part ways."""

    def __init__(self, rank: int = 1, step: int = 1, seconds: float = 0.0) -> None:
        super().__init__(seconds)
        self.rank = rank
        self.step = step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if trainer.global_step != self.step:
            return
        _write("stuck", str(self.rank))
        if trainer.global_rank == self.rank:
            dist.all_reduce(torch.zeros(1))
        while True:
            time.sleep(0.05)
