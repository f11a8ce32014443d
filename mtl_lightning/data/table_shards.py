"""The rows of a streamed table in LitData shards: written by the second pass over the file,
read back a block of rows at a time.

A split is one LitData folder whose items are blocks of ``block_rows`` consecutive rows (the
last may be shorter): ``{"x": float64 [rows, F], "y:<task>": labels}`` with class indices
(``-100`` = missing) or float targets (NaN = missing). Features are stored as read (float64)
and standardised when a block is decoded, so a checkpoint's statistics apply to shards written
by another run. Decoded blocks go through the per-process cache of
:mod:`~mtl_lightning.data.shards` (:func:`~mtl_lightning.data.shards.set_chunk_cache_size`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtl_lightning.data.normalize import _Moments
from mtl_lightning.data.shards import _CACHE
from mtl_lightning.data.splits import SPLIT_NAMES
from mtl_lightning.data.table_blocks import iter_table_blocks
from mtl_lightning.data.table_rows import read_part
from mtl_lightning.data.table_scan import READ_ROWS, Scan
from mtl_lightning.data.table_tasks import TaskDecl

__all__ = ["SplitWriter", "TableShardDataset", "write_splits"]


class SplitWriter:
    """Rows appended a block at a time, written as LitData items of ``block_rows`` rows."""

    def __init__(self, root: Path, block_rows: int, chunk_bytes: str | int) -> None:
        from litdata.streaming.writer import BinaryWriter

        self.root, self.block_rows = root, block_rows
        self.writer = BinaryWriter(str(root), chunk_bytes=chunk_bytes)
        self.pending: dict[str, np.ndarray] | None = None
        self.items = self.rows = 0
        self.classes: dict[str, np.ndarray] = {}  # rows per class index, per task

    def add(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Append rows (``arrays["x"]`` and the targets, one row each)."""
        for key, v in arrays.items():
            if key.startswith("y:") and v.dtype == np.int64:
                count = np.bincount(v[v >= 0])
                old = self.classes.get(key[2:], np.zeros(0, np.int64))
                size = max(len(count), len(old))
                self.classes[key[2:]] = np.pad(old, (0, size - len(old))) + np.pad(
                    count, (0, size - len(count))
                )
        if self.pending is None:
            self.pending = {k: np.asarray(v) for k, v in arrays.items()}
        else:
            self.pending = {k: np.concatenate([self.pending[k], v]) for k, v in arrays.items()}
        while len(self.pending["x"]) >= self.block_rows:
            self._flush(self.block_rows)

    def _flush(self, n: int) -> None:
        assert self.pending is not None
        self.writer[self.items] = {k: np.ascontiguousarray(v[:n]) for k, v in self.pending.items()}
        self.pending = {k: v[n:] for k, v in self.pending.items()}
        self.items, self.rows = self.items + 1, self.rows + n

    def done(self) -> dict[str, Any]:
        """Write the last block and LitData's index; what the split's reader needs."""
        if self.pending is not None and len(self.pending["x"]):
            self._flush(len(self.pending["x"]))
        if self.items:
            self.writer.done()
            self.writer.merge()
        classes = {
            t: {str(c): int(n) for c, n in enumerate(v) if n} for t, v in self.classes.items()
        }
        return {"rows": self.rows, "items": self.items, "classes": classes}


def _targets(part: Any, rows: np.ndarray, tasks: Sequence[TaskDecl], vocab: Any) -> dict:
    out = {}
    for t in tasks:
        values = part.labels[t.name]
        if t.is_classification:
            labels = [values[i] for i in rows.tolist()]
            out[f"y:{t.name}"] = vocab.encode(t.name, labels).numpy()
        else:
            out[f"y:{t.name}"] = np.asarray(values, dtype=np.float64)[rows]
    return out


def write_splits(
    files: Mapping[str, Path],
    h: Any,
    tasks: Sequence[TaskDecl],
    known: Mapping[str, Sequence[str] | None],
    scan: Scan,
    root: Path,
    block_rows: int,
    chunk_bytes: str | int,
) -> dict[str, Any]:
    """The second pass: the kept rows of ``files`` into one folder per split under ``root``,
    and the training split's feature mean and std (float64, merged block by block)."""
    names = sorted(set(SPLIT_NAMES) & set(files)) if "all" not in files else list(SPLIT_NAMES)
    writers = {s: SplitWriter(root / s, block_rows, chunk_bytes) for s in names}
    moments = _Moments()
    usable = kept_at = 0
    for path in files.values():
        for block in iter_table_blocks(path, h.encoding, h.columns, READ_ROWS):
            part = read_part(block, scan.features, tasks, known, h.split_column)
            good = np.asarray([i for i in range(len(block)) if i not in part.bad], np.int64)
            rows = good[scan.kept[usable : usable + len(good)]]
            usable += len(good)
            split = scan.split[kept_at : kept_at + len(rows)]
            kept_at += len(rows)
            x, targets = part.features[rows], _targets(part, rows, tasks, scan.vocab)
            for code, name in enumerate(SPLIT_NAMES):
                pick = split == code
                if pick.any():
                    writers[name].add({"x": x[pick], **{k: v[pick] for k, v in targets.items()}})
                    if name == "train":
                        moments.add(torch.from_numpy(np.ascontiguousarray(x[pick].T)))
    assert usable == len(scan.kept) and kept_at == len(scan.split), "the file changed"
    splits = {s: w.done() for s, w in writers.items()}
    mean = std = None
    if moments.m2 is not None:
        mean = moments.mean.numpy()
        std = np.sqrt((moments.m2 / moments.count).numpy())
    return {"splits": splits, "mean": mean, "std": std}


class TableShardDataset(Dataset):
    """The rows of one split's shards: items as :class:`~mtl_lightning.data.base.TensorTaskDataset`
    gives them (``features``, ``targets``; ``index`` too with ``indexed``), standardised with
    ``mean`` and ``std``. Keys may be ``(index, epoch)`` pairs (the shard sampler's).

    ``tasks`` are ``(name, kind, size)``; ``remap`` maps the stored class indices of a task to
    the vocabulary in use (a checkpoint's); ``labelled=False``: no targets stored (predict),
    every target missing.
    """

    def __init__(
        self,
        folder: Path,
        rows: int,
        block_rows: int,
        mean: np.ndarray,
        std: np.ndarray,
        tasks: Sequence[tuple[str, str, int]],
        remap: Mapping[str, np.ndarray] | None = None,
        indexed: bool = False,
        labelled: bool = True,
    ) -> None:
        self.folder, self.rows, self.block_rows = str(folder), rows, block_rows
        self.root = f"{folder}#{uuid.uuid4().hex}"  # this dataset's blocks in the cache
        self.mean, self.std, self.tasks = mean, std, list(tasks)
        self.remap, self.indexed, self.labelled = dict(remap or {}), indexed, labelled
        index = json.loads((Path(folder) / "index.json").read_text())
        sizes = [int(c["chunk_size"]) for c in index["chunks"]]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._reader: Any = None

    def __len__(self) -> int:
        return self.rows

    def __getstate__(self) -> dict[str, Any]:  # loader workers open their own reader
        return {**self.__dict__, "_reader": None}

    def decode_chunk(self, block: int) -> dict[str, Any]:
        """Block ``block``: standardised float32 features and target tensors."""
        from litdata.streaming.sampler import ChunkedIndex

        if self._reader is None:
            from litdata import StreamingDataset

            self._reader = StreamingDataset(self.folder)
        chunk = int(np.searchsorted(self.starts, block, side="right")) - 1
        item = self._reader[ChunkedIndex(block, chunk)]  # by chunk: not LitData's DDP share
        x = (np.asarray(item["x"]) - self.mean) / self.std
        n = len(x)
        targets: dict[str, Tensor] = {}
        for name, kind, size in self.tasks:
            if not self.labelled:
                targets[name] = (
                    torch.full((n,), -100, dtype=torch.long)
                    if kind == "classification"
                    else torch.full((n, size), float("nan"))
                )
                continue
            y = np.asarray(item[f"y:{name}"])
            if kind == "classification":
                if name in self.remap:
                    y = np.where(y >= 0, self.remap[name][np.maximum(y, 0)], y)
                targets[name] = torch.from_numpy(y.astype(np.int64))
            else:
                targets[name] = torch.as_tensor(y, dtype=torch.float32)
        return {"x": torch.as_tensor(x, dtype=torch.float32), "targets": targets}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, object]:
        i = int(key[0] if isinstance(key, tuple) else key)
        if not 0 <= i < self.rows:
            raise IndexError(f"row {i} of a split of {self.rows} rows")
        block, r = divmod(i, self.block_rows)
        data = _CACHE.get(self, block)  # type: ignore[arg-type]
        item: dict[str, object] = {
            "features": data["x"][r],
            "targets": {k: v[r] for k, v in data["targets"].items()},
        }
        if self.indexed:
            item["index"] = i
        return item
