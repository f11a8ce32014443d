"""Test-only helpers for tests/test_ddp.py (importable by the CLI subprocesses via PYTHONPATH)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class LambdaRecorder(pl.Callback):
    """Record the reversal lambda each training step used; write ``lambda_rank{R}.json`` per rank.

    Every rank writes its own file in the working directory, so a test can compare the ranks.
    """

    def __init__(self) -> None:
        self.values: list[list[float]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.values.append([trainer.global_step, float(pl_module.reversal.lambda_)])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Path(f"lambda_rank{trainer.global_rank}.json").write_text(json.dumps(self.values))
