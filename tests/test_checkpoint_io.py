"""AtomicCheckpointIO: a full disk is a clear error, debris of killed writes is removed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from mtl_lightning.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointDiskFullError,
    remove_stale_temp_files,
)

DISK_FULL = {
    "torch": RuntimeError(
        "[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4310"
    ),
    "enospc": OSError(errno.ENOSPC, "No space left on device"),
}


@pytest.mark.parametrize("kind", list(DISK_FULL))
def test_disk_full_names_file_bytes_and_free_space(tmp_path, monkeypatch, kind):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def fill_the_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a partial file stays behind ...
        raise DISK_FULL[kind]  # ... when the disk fills

    monkeypatch.setattr(torch, "save", fill_the_disk)
    usage = SimpleNamespace(total=10_000_000, used=9_999_877, free=123)
    monkeypatch.setattr("mtl_lightning.checkpoint_io.shutil.disk_usage", lambda d: usage)
    with pytest.raises(CheckpointDiskFullError) as error:
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC and isinstance(
        error.value.__cause__, type(DISK_FULL[kind])
    )
    assert f"cannot write checkpoint {path}" in message
    assert "at least 4000 bytes" in message  # the tensor data to be written
    assert f"device of {path.parent} (123 bytes free of 10000000" in message
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # partial file removed
    assert io.load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact


def test_other_write_errors_pass_through(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="Input/output error") as error:
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "last.ckpt")
    assert not isinstance(error.value, CheckpointDiskFullError)
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_debris_of_dead_writers_is_removed_on_first_save(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    dead, alive = _dead_pid(), os.getppid()
    stale = [d / f".last.ckpt.tmp-{dead}", d / f".epoch=3.ckpt.tmp-{dead}"]
    kept = [
        d / f".last.ckpt.tmp-{alive}",  # a running writer (another rank or run)
        d / f".best.ckpt.tmp-{dead}",  # written after this process started: not touched
        d / ".notes.tmp-x",  # not one of ours
    ]
    for path in stale + kept:
        path.write_bytes(b"x" * 100)
    for path in stale + kept[:1]:
        os.utime(path, (0, 0))  # long before this process started

    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, d / "last.ckpt")
    assert sorted(p.name for p in d.iterdir()) == sorted(["last.ckpt", *(p.name for p in kept)])
    assert remove_stale_temp_files([d, tmp_path / "missing"]) == []  # nothing more, no error
