"""Run ``python -m mtl_lightning ...`` as users do, in its own process group, under a hard limit.

A DDP run that hangs must fail its test, not the CI job: on timeout the whole process group
(the launcher and every rank it started) is killed and the test fails with the output so far.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def run_cli(cwd: Path, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m mtl_lightning *args`` in ``cwd``; asserts exit code 0 within ``timeout`` s."""
    cwd.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtl_lightning", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"`mtl_lightning {' '.join(args)}` did not finish in {timeout} s (hang?)\n{err[-3000:]}"
        ) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err[-4000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_in_process(cwd: Path, monkeypatch: Any, args: list[str]) -> Any:
    """``python -m mtl_lightning *args`` in this process, in ``cwd`` (no second ~8 s import);
    returns what the command returns (the LightningCLI for fit).

    Lightning leaves ``MASTER_PORT`` and the like in ``os.environ``; they are removed again, or
    the next two-process run would inherit a port and find it taken."""
    from mtl_lightning.commands import main

    cwd.mkdir(parents=True, exist_ok=True)
    environ = dict(os.environ)
    with monkeypatch.context() as patch:
        patch.chdir(cwd)
        try:
            return main(list(args))
        finally:
            os.environ.clear()
            os.environ.update(environ)


def start_fit(cwd: Path, config: dict[str, Any], *extra: str) -> subprocess.Popen:
    """Write ``config`` to ``cwd/config.yaml`` and start ``fit --config config.yaml *extra``
    there (stdout and stderr together); the caller waits and may kill it."""
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    command = [sys.executable, "-m", "mtl_lightning", "fit", "--config", "config.yaml", *extra]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
