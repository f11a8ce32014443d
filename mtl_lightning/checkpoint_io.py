"""`AtomicCheckpointIO`: a checkpoint file is either the old complete one or the new complete one.

Lightning's ``TorchCheckpointIO`` serialises to memory and writes through an fsspec transaction
whose temporary file lives in the system temp directory; the final ``shutil.move`` is a rename
only when that directory is on the same filesystem as the checkpoint, and a copy (interruptible,
leaving a truncated file under the final name) when it is not. Nothing is fsynced, so after a
power loss a renamed file can be empty. Here the bytes go to a hidden temporary file *in the
checkpoint's own directory*, are fsynced, and replace the target with ``os.replace`` (atomic on
POSIX and Windows); the directory is fsynced too. A crash at any point leaves the previous file
intact, and debris (``.<name>.tmp-<pid>``) never matches ``last*.ckpt``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

TMP_MARKER = ".tmp-"


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
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


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
    pass ``Trainer(plugins=[AtomicCheckpointIO()])``.

    Example:
        >>> import tempfile
        >>> io = AtomicCheckpointIO(); path = Path(tempfile.mkdtemp()) / "a" / "last.ckpt"
        >>> io.save_checkpoint({"step": 3}, path); io.load_checkpoint(path)["step"]
        3
    """

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
        atomic_torch_save(checkpoint, path)


def find_last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest ``last*.ckpt`` this trainer's runs have written, across logger versions.

    Lightning resolves ``ckpt_path="last"`` only inside the *current* run's checkpoint directory,
    and with a versioned logger a resumed run gets a fresh ``version_N``, so it would find nothing
    and silently start from scratch. This searches the checkpoint callbacks' fixed ``dirpath``\\ s
    and every ``<logger root>/*/checkpoints`` (or ``<default_root_dir>/checkpoints`` without a
    logger). Temporary files of :func:`atomic_torch_save` and dangling links are never returned.
    """
    dirs: list[Path] = [
        Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)
    ]
    root = getattr(trainer.logger, "root_dir", None) if trainer.logger is not None else None
    if root:
        dirs.extend(Path(root).glob("*/checkpoints"))
    else:
        dirs.append(Path(trainer.default_root_dir) / "checkpoints")
    found = [
        p
        for d in dirs
        if d.is_dir()
        for p in d.iterdir()
        if p.name.startswith("last")
        and p.suffix == ".ckpt"
        and TMP_MARKER not in p.name
        and p.is_file()
    ]
    if not found:
        return None
    return str(max(found, key=lambda p: p.stat().st_mtime))
