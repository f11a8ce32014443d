"""`AtomicCheckpointIO`: a checkpoint file is either the old complete one or the new complete one.

Lightning's ``TorchCheckpointIO`` serialises to memory and writes through an fsspec transaction
whose temporary file lives in the system temp directory; the final ``shutil.move`` is a rename
only when that directory is on the same filesystem as the checkpoint, and a copy (interruptible,
leaving a truncated file under the final name) when it is not. Nothing is fsynced, so after a
power loss a renamed file can be empty. Here the bytes go to a hidden temporary file *in the
checkpoint's own directory*, are fsynced, and replace the target with ``os.replace`` (atomic on
POSIX and Windows); the directory is fsynced too. A crash at any point leaves the previous file
intact, and debris (``.<name>.tmp-<pid>``) never matches ``last*.ckpt``; the debris of dead
writers is removed on the next start (:func:`remove_stale_temp_files`). A full disk is an error
naming the file, the bytes needed and the space left (:class:`CheckpointDiskFullError`).

:func:`find_last_checkpoint` resolves ``--ckpt_path last`` across a logger's versions, to a
checkpoint of the same experiment (:class:`~mtl_lightning.callbacks.config_fingerprint.ConfigFingerprint`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from mtl_lightning.callbacks.config_fingerprint import (
    ConfigFingerprint,
    config_differences,
    read_fingerprint,
)

TMP_MARKER = ".tmp-"
_TMP_NAME = re.compile(r"^\..+" + re.escape(TMP_MARKER) + r"(\d+)$")
_STARTED = time.time()  # (about) when this process started: when this module was imported
# torch's zip writer reports a short write (ENOSPC underneath) as one of these
_SHORT_WRITE = ("unexpected pos", "file write failed")
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # no space / over quota


class CheckpointDiskFullError(OSError):
    """A checkpoint could not be written because its filesystem is full (errno ``ENOSPC``)."""


class CheckpointMismatchError(ValueError):
    """``--ckpt_path last`` found ``last*.ckpt`` files, but none of the current experiment."""


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save(obj, path)`` such that ``path`` never holds a partial file.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "x.ckpt"
        >>> atomic_torch_save({"w": torch.ones(2)}, target)
        >>> torch.load(target)["w"].tolist(), sorted(p.name for p in target.parent.iterdir())
        ([1.0, 1.0], ['x.ckpt'])
    """
    target = Path(os.fspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}{TMP_MARKER}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        written = tmp.stat().st_size if tmp.is_file() else 0
        with contextlib.suppress(OSError):
            tmp.unlink()
        if _is_disk_full(error):
            raise _disk_full_error(target, obj, written) from error
        raise
    _fsync_dir(target.parent)


def _is_disk_full(error: BaseException | None) -> bool:
    """``OSError(ENOSPC/EDQUOT)`` or torch's short-write ``RuntimeError``, or caused by one."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return True
        if isinstance(error, RuntimeError) and any(s in str(error) for s in _SHORT_WRITE):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _disk_full_error(target: Path, obj: Any, written: int) -> CheckpointDiskFullError:
    usage = shutil.disk_usage(target.parent)
    return CheckpointDiskFullError(
        errno.ENOSPC,
        f"cannot write checkpoint {target}: no space left on the device of {target.parent} "
        f"({usage.free} bytes free of {usage.total} after removing the partial file of {written} "
        f"bytes; the checkpoint needs at least {_tensor_bytes(obj)} bytes of tensor data). Free "
        "space there, or write checkpoints elsewhere (ModelCheckpoint dirpath / "
        "--trainer.default_root_dir); the previous checkpoint under this name is intact",
    )


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages in nested dicts/lists/tuples (a size estimate).

    Example:
        >>> w = torch.zeros(4); _tensor_bytes({"a": w, "b": [w, torch.zeros(2, dtype=torch.int8)]})
        18
    """
    storages: dict[tuple[str, int], int] = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[(str(item.device), storage.data_ptr())] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(storages.values())


def remove_stale_temp_files(directories: Iterable[_PATH]) -> list[Path]:
    """Delete the ``.<name>.tmp-<pid>`` files of checkpoint writes that were killed; returns them.

    A temporary file is removed only if its writer is gone (no process ``<pid>`` on this machine)
    *and* it was last written before this process started, so a write in progress, by another
    rank, another run, or a run on another machine sharing the directory, is never touched (a
    reused pid keeps its file until a later start). Without a way to test a pid (Windows)
    nothing is removed.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); old = d / ".last.ckpt.tmp-999999999"; old.touch()
        >>> os.utime(old, (0, 0)); [p.name for p in remove_stale_temp_files([d])]
        ['.last.ckpt.tmp-999999999']
    """
    removed = []
    for directory in directories:
        with contextlib.suppress(OSError):
            for path in Path(os.fspath(directory)).iterdir():
                match = _TMP_NAME.match(path.name)
                pid = int(match.group(1)) if match else None
                if pid is None or (pid != os.getpid() and _pid_alive(pid)):
                    continue  # an old file under our own pid is a dead namesake's
                with contextlib.suppress(OSError):
                    if path.is_file() and path.stat().st_mtime < _STARTED:
                        path.unlink()
                        removed.append(path)
    if removed:
        rank_zero_info(
            f"removed {len(removed)} temporary file(s) of killed checkpoint writes: "
            + ", ".join(str(p) for p in removed[:5])
            + (" ..." if len(removed) > 5 else "")
        )
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may exist here (True when that cannot be tested)."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that writes local checkpoints atomically (see module docstring).

    Remote paths (``s3://`` and the like) go through Lightning's own writer. ``python -m
    mtl_lightning`` adds this plugin unless the config names another ``CheckpointIO``; elsewhere
    pass ``Trainer(plugins=[AtomicCheckpointIO()])``. The first save into a directory removes
    the debris of killed writes there (:func:`remove_stale_temp_files`).

    Example:
        >>> import tempfile
        >>> io = AtomicCheckpointIO(); path = Path(tempfile.mkdtemp()) / "a" / "last.ckpt"
        >>> io.save_checkpoint({"step": 3}, path); io.load_checkpoint(path)["step"]
        3
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"`storage_options` is not supported by {type(self).__name__} for local paths"
            )
        directory = Path(os.fspath(path)).parent
        if directory not in self._cleaned:
            self._cleaned.add(directory)
            remove_stale_temp_files([directory])
        atomic_torch_save(checkpoint, path)


def checkpoint_dirs(trainer: pl.Trainer) -> list[Path]:
    """Where this trainer's runs keep checkpoints: the checkpoint callbacks' fixed ``dirpath``\\ s
    and every ``<logger root>/*/checkpoints`` (``<default_root_dir>/checkpoints`` without one)."""
    dirs = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    root = getattr(trainer.logger, "root_dir", None) if trainer.logger is not None else None
    if root:
        dirs.extend(sorted(Path(root).glob("*/checkpoints")))
    else:
        dirs.append(Path(trainer.default_root_dir) / "checkpoints")
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _last_files(dirs: Iterable[Path]) -> list[Path]:
    """``last*.ckpt`` files, newest first (ties by name: the same order on every DDP rank)."""
    found = []
    for d in dirs:
        for p in d.iterdir():
            if p.name.startswith("last") and p.suffix == ".ckpt" and TMP_MARKER not in p.name:
                with contextlib.suppress(OSError):  # a dangling link, or gone meanwhile
                    if p.is_file():
                        found.append((p.stat().st_mtime_ns, str(p), p))
    return [p for *_, p in sorted(found, reverse=True)]


def find_last_checkpoint(
    trainer: pl.Trainer, current: ConfigFingerprint | None = None
) -> str | None:
    """The newest ``last*.ckpt`` this trainer's runs have written, across logger versions.

    Lightning resolves ``ckpt_path="last"`` only inside the *current* run's checkpoint directory,
    and with a versioned logger a resumed run gets a fresh ``version_N``, so it would find nothing
    and silently start from scratch. This searches :func:`checkpoint_dirs`. Temporary files of
    :func:`atomic_torch_save` and dangling links are never returned.

    With ``current`` (the running experiment's :class:`ConfigFingerprint`) only a checkpoint with
    the same fingerprint is returned. If there are ``last*.ckpt`` files but none of them matches,
    :class:`CheckpointMismatchError` names the newest one, its run and the differences. Files
    without a fingerprint (written before fingerprints existed) are taken, newest first and with
    a warning, only when no ``last*.ckpt`` has a fingerprint at all. The choice depends on the
    files alone, so every DDP rank makes the same one.
    """
    found = _last_files(checkpoint_dirs(trainer))
    if current is None or not found:
        return str(found[0]) if found else None
    stamped: list[tuple[Path, dict[str, Any]]] = []
    for path in found:
        record = read_fingerprint(path)
        if record is not None and record["fingerprint"] == current.fingerprint:
            return str(path)
        if record is not None:
            stamped.append((path, record))
    if stamped:
        raise CheckpointMismatchError(_mismatch_message(*stamped[0], current, len(found)))
    warnings.warn(
        f"--ckpt_path last: resuming {found[0]}, which has no configuration fingerprint (written "
        "before fingerprints were stored), so it cannot be checked to be this experiment's",
        UserWarning,
        stacklevel=2,
    )
    return str(found[0])


def _mismatch_message(
    path: Path, record: dict[str, Any], current: ConfigFingerprint, n_found: int
) -> str:
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    config = run / "config.yaml"
    saved, now = record["experiment"], current.experiment
    differences = config_differences(saved, now)
    top = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    return (
        f"--ckpt_path last: none of the {n_found} last*.ckpt file(s) belongs to this experiment.\n"
        f"  newest found: {path} (run {run}, fingerprint {record['fingerprint']})\n"
        f"  this run: {current.source or 'the current configuration'} "
        f"(fingerprint {current.fingerprint})\n"
        f"  they differ in {top}:\n    " + "\n    ".join(differences) + "\n"
        f"To resume that run, name its config and checkpoint: --config "
        f"{config if config.is_file() else '<its config.yaml>'} --ckpt_path {path}\n"
        "To start this experiment from scratch, leave out --ckpt_path."
    )
