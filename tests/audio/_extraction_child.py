"""Run by test_parallel.py in a fresh interpreter: a real extraction that gets SIGKILLed.

``python _extraction_child.py CACHE HELD WORKERS BLOCK_FROM PATH...`` extracts log-mel features of
the paths with ``extract_all``. The computation and the atomic write are the real ones; only
``torch.save`` of the files from position ``BLOCK_FROM`` on is held up half-way: it writes the
first half of the real bytes to the file it was given, flushes them, says so by creating
``HELD/<pid>`` and sleeps, so the parent kills the process group while entries are being
written, at a point it can wait for.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import torch

from mtl_lightning.audio.extractor import FeatureSpec
from mtl_lightning.audio.parallel import extract_all

current: list[str] = [""]
held_up: set[str] = set()
held: list[Path] = []
real_extract, real_save = FeatureSpec.extract, torch.save


def extract(self: FeatureSpec, path: str | Path) -> torch.Tensor:
    current[0] = str(path)  # one file at a time per process
    return real_extract(self, path)


def save(obj: object, f: io.BufferedWriter, *args: object, **kwargs: object) -> None:
    if current[0] not in held_up:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    (held[0] / str(os.getpid())).touch()
    time.sleep(600)  # SIGKILL arrives here


def main() -> None:
    cache, folder, workers, block_from, *names = sys.argv[1:]
    paths = [Path(p) for p in names]
    held_up.update(str(p) for p in paths[int(block_from) :])
    held.append(Path(folder))
    FeatureSpec.extract = extract  # type: ignore[method-assign]
    torch.save = save
    extract_all(paths, FeatureSpec(n_mels=16), cache, workers=int(workers), progress=False)


if __name__ == "__main__":
    main()
