"""Fail fast under DDP: a dead rank, a stuck collective or a SIGTERM ends every rank
of ``python -m mtl_lightning fit`` within seconds, with a message naming the rank.

Each DDP test runs the real CLI (2 CPU processes, gloo; progress bar and the default
checkpoints on) in its own session, under hard timeouts, and checks that no process of the
session survives. ``tests/_fail_fast_helpers.py`` slows the steps down, records each rank's
pid and step, and makes one rank wait in a collective the other never calls.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from mtl_lightning.commands import main
from mtl_lightning.distributed import ORPHAN_GRACE_S

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; POSIX signals")

TINY = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.max_epochs",
    "2",
    "--data.init_args.per_pair",
    "4",
    "--data.init_args.batch_size",
    "16",  # 7 steps an epoch with 2 processes
]
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
FAIL_FAST = "--trainer.callbacks+=mtl_lightning.callbacks.FailFast"
SLOW = ["--trainer.callbacks+=_fail_fast_helpers.SlowSteps", "--trainer.callbacks.seconds=0.3"]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _session(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


class Run:
    """``python -m mtl_lightning fit ...`` in a new session (its own process group) in ``cwd``."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.cwd = cwd
        self.err = open(cwd / "stderr.txt", "w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mtl_lightning", "fit", *args],
            cwd=cwd,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=self.err,
            start_new_session=True,
        )

    def wait_for(
        self, name: str, check: Callable[[str], bool] = bool, timeout: float = 120.0
    ) -> str:
        """The text of file ``name`` once it exists and passes ``check``."""
        path, deadline = self.cwd / name, time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = path.read_text() if path.exists() else ""
            if text and check(text):
                return text
            assert self.process.poll() is None, f"ended early:\n{self.stderr[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"no {name} after {timeout} s:\n{self.stderr[-3000:]}")

    def pid(self, rank: int) -> int:
        """The pid of ``rank``: a process of this run's session."""
        pid = int(self.wait_for(f"rank{rank}.pid"))
        assert pid in _session(self.process.pid), f"rank {rank} (pid {pid}) is not this run's"
        return pid

    def wait(self, timeout: float) -> tuple[int | None, float]:
        """The launcher's return code (``None`` if still running after ``timeout``) and the
        seconds it took."""
        start = time.monotonic()
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - start

    def survivors(self, within: float = 3.0) -> list[int]:
        """The session's processes still alive ``within`` seconds from now (waits for them)."""
        deadline = time.monotonic() + within
        while (alive := _session(self.process.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return alive

    @property
    def stderr(self) -> str:
        return (self.cwd / "stderr.txt").read_text(errors="replace")

    def stop(self) -> None:
        """SIGKILL whatever is left of the session."""
        for pid in _session(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.err.close()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start runs in ``tmp_path``; whatever is left of them is killed afterwards."""
    runs: list[Run] = []

    def start(*args: str) -> Run:
        runs.append(Run(tmp_path, *args))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


def _at_step(step: int) -> Callable[[str], bool]:
    return lambda text: text.strip().isdigit() and int(text) >= step


def test_sigkill_of_rank_1_ends_the_run_naming_it(cli):
    run = cli(*TINY, *DDP, *SLOW)
    run.wait_for("rank1.step", _at_step(2))
    os.kill(run.pid(1), signal.SIGKILL)
    code, seconds = run.wait(60)
    assert code is not None and code != 0, f"after {seconds:.1f} s:\n{run.stderr[-3000:]}"
    # Lightning's child observer (every 5 s), or FailFast when gloo fails first on rank 0
    observer = r"\[rank: 1\] Child process with PID \d+ terminated with code -9"
    fail_fast = r"failed because a peer died: rank 1 \(pid \d+\) killed by SIGKILL"
    assert re.search(f"{observer}|{fail_fast}", run.stderr), run.stderr[-3000:]
    assert run.survivors() == []
    print(f"SIGKILL of rank 1: the run exited {code} after {seconds:.1f} s")


def test_sigterm_stops_every_rank_with_a_checkpoint_that_last_resumes(cli, tmp_path, monkeypatch):
    run = cli(*TINY, *DDP, *SLOW)
    run.wait_for("rank1.step", _at_step(2))
    os.kill(run.process.pid, signal.SIGTERM)
    code, seconds = run.wait(30)
    assert code == 128 + signal.SIGTERM, f"after {seconds:.1f} s:\n{run.stderr[-3000:]}"
    assert seconds < 10 and run.survivors() == []
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    saved = torch.load(checkpoints / "last-sigterm.ckpt", weights_only=True)
    assert 2 <= saved["global_step"] < 14  # mid-run, between two training steps
    assert re.search(r"SIGTERM: saved \S*version_0/checkpoints/last-sigterm.ckpt", run.stderr)
    print(f"SIGTERM: every rank gone after {seconds:.1f} s, step {saved['global_step']} saved")

    # `--ckpt_path last` resumes from it (here in one process: the trainer is not the experiment)
    monkeypatch.chdir(tmp_path)
    resumed = main(["fit", *TINY, "--trainer.enable_progress_bar", "false", "--ckpt_path", "last"])
    assert resumed is not None and resumed.trainer.state.finished
    assert resumed.trainer.ckpt_path == str(checkpoints.relative_to(tmp_path) / "last-sigterm.ckpt")


def test_a_stuck_collective_times_out_naming_it_and_the_rank(cli):
    # rank 0 waits in an all-reduce that rank 1 never calls (it sleeps instead)
    stuck = [
        "--trainer.callbacks+=_fail_fast_helpers.StuckCollective",
        "--trainer.callbacks.rank=0",
    ]
    run = cli(*TINY, *DDP, *stuck, FAIL_FAST, "--trainer.callbacks.collective_timeout=3")
    run.wait_for("stuck")
    code, seconds = run.wait(40)
    assert code == 1, f"after {seconds:.1f} s:\n{run.stderr[-3000:]}"
    assert seconds < 3 + 5
    expected = f"rank 0: collective all_reduce (called from {TESTS / '_fail_fast_helpers.py'}:"
    assert expected in run.stderr and "timed out after 3 s" in run.stderr, run.stderr[-3000:]
    # rank 1, its child, sees it gone and exits too
    assert run.survivors(within=ORPHAN_GRACE_S + 2) == []
    assert re.search(r"\[rank 1\] fail-fast: rank 0 \(pid \d+, the launcher\) died", run.stderr)
    print(f"stuck collective: the run exited {code} after {seconds:.1f} s")


def test_sigterm_ends_a_launcher_stuck_in_a_collective(cli):
    stuck = [
        "--trainer.callbacks+=_fail_fast_helpers.StuckCollective",
        "--trainer.callbacks.rank=0",
    ]
    run = cli(*TINY, *DDP, *stuck, FAIL_FAST, "--trainer.callbacks.sigterm_grace=3")
    run.wait_for("stuck")
    time.sleep(0.5)  # rank 0 is in the all-reduce now
    os.kill(run.process.pid, signal.SIGTERM)
    code, seconds = run.wait(30)
    assert code == 128 + signal.SIGTERM, f"after {seconds:.1f} s:\n{run.stderr[-3000:]}"
    assert seconds < 3 + 5 and run.survivors() == []
    message = "still running 3 s after SIGTERM; its main thread is in collective all_reduce"
    assert message in run.stderr and re.search(r"killed rank 1 \(pid \d+\)", run.stderr)
    print(f"SIGTERM to a stuck launcher: every rank gone after {seconds:.1f} s")
