"""Test-only helpers for tests/test_resume.py: a callback that SIGKILLs its own process."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning.pytorch as pl


class KillAtStep(pl.Callback):
    """Kill the process with SIGKILL (no cleanup, no exception) before optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
