"""Under DDP (2 CPU processes), a non-finite loss or gradient on one rank skips the step on all.

Lightning does not let ``training_step`` return ``None`` under DDP; the guard's skipped step must
still leave every parameter (and AdamW's weight decay) alone on every rank.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

CHILD = Path(__file__).with_name("_nonfinite_ddp_child.py")


def test_one_rank_nonfinite_skips_the_step_on_both_ranks(tmp_path):
    out = tmp_path / "out.pt"
    result = subprocess.run(
        [sys.executable, str(CHILD), str(out), "2"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = torch.load(out, weights_only=True)
    for mode, run in runs.items():
        # 64 samples, 2 ranks x batch 8: 4 steps, the last 2 poisoned on rank 1
        assert run["steps"] == 4, mode
        assert run["skipped"] == 2, mode
        moved = False
        for key, value in run["final"].items():
            if key.startswith(("trunk", "heads")):
                assert torch.equal(value, run["after_clean"][key]), f"{mode}: {key}"
                moved = moved or not torch.equal(value, torch.zeros_like(value))
        assert moved
