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


def assert_runs_match(one: Path, two: Path, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Two run directories (``lightning_logs/version_N``) ended alike: every task's val loss,
    acc, balanced acc and n in ``summary.json``, and every weight of ``checkpoints/last.ckpt``."""
    import pytest
    import torch

    def val(run: Path) -> dict[str, dict]:
        return {
            t["task"]: t for t in json.loads((run / "summary.json").read_text())["val"]["tasks"]
        }

    ref, got = val(one), val(two)
    assert ref.keys() == got.keys()
    for task, row in ref.items():
        for key in ("loss", "acc", "balanced_acc", "n"):
            assert got[task][key] == pytest.approx(row[key], rel=rtol, abs=atol), (task, key)
    w_one, w_two = (
        torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for r in (one, two)
    )
    for key, value in w_one.items():
        torch.testing.assert_close(w_two[key], value, rtol=rtol, atol=atol, msg=key)
