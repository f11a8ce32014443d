"""On-disk feature cache keyed by file identity and feature parameters, with atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

__all__ = ["FeatureCache"]

_HOST = socket.gethostname().replace(".", "_").replace("-", "_")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a killed one not yet reaped, a zombie, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # Linux: the state follows the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class FeatureCache:
    """Store one tensor per (source file, parameters); a killed writer leaves no partial entry.

    Entries are written to a temp file in the cache folder and moved in place with
    ``os.replace`` (atomic on POSIX), so a reader sees either nothing or a whole file. A
    temp file is named after its writer (host and process id); the half-written ones that a
    killed writer leaves are never read, and :meth:`remove_stale_temp_files` deletes them.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); src = d / "x.wav"; _ = src.write_bytes(b"1")
        >>> cache = FeatureCache(d / "cache", {"n_mels": 40})
        >>> cache.get_or_compute(src, lambda p: torch.ones(2)).tolist()
        [1.0, 1.0]
        >>> cache.get_or_compute(src, lambda p: torch.zeros(2)).tolist()  # hit: not recomputed
        [1.0, 1.0]
    """

    def __init__(self, root: str | Path, params: Mapping[str, object]) -> None:
        self.root = Path(root)
        self.params_digest = hashlib.sha1(
            json.dumps(dict(params), sort_keys=True, default=str).encode()
        ).hexdigest()[:16]

    def key(self, source: str | Path) -> str:
        """Hash of absolute path, size, mtime (ns) and the parameter digest."""
        st = Path(source).stat()
        ident = f"{Path(source).resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.params_digest}"
        return hashlib.sha1(ident.encode()).hexdigest()

    def path_for(self, source: str | Path) -> Path:
        """Where the entry for ``source`` lives."""
        k = self.key(source)
        return self.root / k[:2] / f"{k}.pt"

    def load(self, source: str | Path) -> torch.Tensor | None:
        """The cached tensor of ``source``, or ``None`` on a miss.

        An entry that cannot be read (damaged outside this class, e.g. by a disk error) is
        deleted and counts as a miss, so it is recomputed rather than failing every run.
        """
        target = self.path_for(source)
        if not target.is_file():
            return None
        try:
            return torch.load(target, weights_only=True)
        except Exception:  # torch raises several types for truncated or foreign files
            target.unlink(missing_ok=True)
            return None

    def get_or_compute(
        self, source: str | Path, compute: Callable[[Path], torch.Tensor]
    ) -> torch.Tensor:
        """Load the cached tensor, or compute, atomically store and return it."""
        cached = self.load(source)
        if cached is not None:
            return cached
        target = self.path_for(source)
        value = compute(Path(source))
        target.parent.mkdir(parents=True, exist_ok=True)
        writer = f"{target.stem}.{_HOST}-{os.getpid()}."
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=writer, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(value, fh)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return value

    def remove_stale_temp_files(self) -> int:
        """Delete temp files of writers on this host that no longer run; returns how many.

        Temp files of live processes, and of other hosts sharing the folder, are kept.
        """
        removed = 0
        for tmp in self.root.glob("*/*.tmp"):
            parts = tmp.name.split(".")  # {key}.{host}-{pid}.{random}.tmp
            host, _, pid = parts[1].rpartition("-") if len(parts) == 4 else ("", "", "")
            if host == _HOST and pid.isdigit() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed
