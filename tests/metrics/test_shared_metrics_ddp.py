"""Two CPU processes (gloo): the shared metrics sum their source's states over the ranks, and
the checkpointed copies are the global sums, as one process over every sample."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shared_metrics_ddp import computed, fill, holder

SCRIPT = Path(__file__).with_name("shared_metrics_ddp.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.filterwarnings("ignore:.*was called before the ``update``")
def test_two_processes_equal_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = holder()
    fill(single)
    expected, whole = computed(single), single.state_dict()
    for rank in ranks:
        assert rank["values"] == expected  # exact: sums of integer counts
        assert rank["unsynced"]  # computing left the local sums to accumulate on
        assert list(rank["saved"]) == list(whole)
        for key, value in whole.items():
            assert torch.equal(rank["saved"][key], value), key
    # each rank held its own half (the shared copies too), not the global sums
    for key, value in whole.items():
        assert torch.equal(ranks[0]["local"][key] + ranks[1]["local"][key], value), key
    assert not torch.equal(ranks[0]["local"]["c.acc.confmat"], whole["c.acc.confmat"])
