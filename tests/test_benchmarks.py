"""The benchmark commands run on a tiny setting (no timing assertions)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lightning_overhead_benchmark_runs():
    out = subprocess.run(
        [sys.executable, "benchmarks/lightning_overhead.py", "--steps", "2", "--trials", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "| MultiTaskModule + Trainer |" in out and "| hand-written PyTorch loop |" in out
