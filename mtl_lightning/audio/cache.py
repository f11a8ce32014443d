"""On-disk feature cache keyed by file identity and feature parameters, with atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

__all__ = ["FeatureCache"]


class FeatureCache:
    """Store one tensor per (source file, parameters); a killed writer leaves no partial entry.

    Entries are written to a temp file in the cache folder and moved in place with
    ``os.replace`` (atomic on POSIX), so a reader sees either nothing or a whole file;
    leftover ``*.tmp`` files from a crash are ignored and overwritten on the next run.

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

    def get_or_compute(
        self, source: str | Path, compute: Callable[[Path], torch.Tensor]
    ) -> torch.Tensor:
        """Load the cached tensor, or compute, atomically store and return it."""
        target = self.path_for(source)
        if target.is_file():
            return torch.load(target, weights_only=True)
        value = compute(Path(source))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(value, fh)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return value
