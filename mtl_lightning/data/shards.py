"""Feature shards: utterance features written once into LitData chunks, and read back lazily.

Layout of a shard directory (local, or any folder every rank can read)::

    shard_dir/<feature-parameter digest>/part-<time>-<host>-<pid>/
        index.json, chunk-*.bin   LitData's format
        items.json                one [key, n_features, frames] per item, in item order

An item's key is the file's name as the manifest writes it (relative to the manifest or the
audio root, as a rule), its size and the feature parameters' digest: the shards of a corpus are
reused by every run, manifest and split that lists the same files, on any machine where the
corpus has the same layout (copied, or on a shared folder); a file whose size changed is computed
again. A file rewritten in place at the same size is not noticed: write such a corpus into a new
``shard_dir``. Rows whose key is in no part are computed (in
``workers`` processes) and appended as new parts of at most :data:`PART_ITEMS` items; each
part is written into a temporary folder and renamed in place when whole, so a killed writer
keeps every finished part and leaves no half-written one. Items are written in a fixed
pseudo-random order (by key), so a chunk mixes speakers and labels even when the manifest is
sorted.

Reading: a :class:`ShardItem` is a handle (part, item, shape) that stands where the in-memory
path holds a tensor; :meth:`ShardItem.load` decodes the item's whole chunk into a small
least-recently-used cache of decoded chunks (:func:`set_chunk_cache_size`), so memory is a few
chunks whatever the corpus size, and reading in storage order decodes each chunk once.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtl_lightning.audio.cache import FeatureCache, _alive
from mtl_lightning.audio.decode import AudioDecodeError
from mtl_lightning.audio.extractor import PRECOMPUTED_SUFFIXES, FeatureSpec, load_precomputed
from mtl_lightning.audio.parallel import ExtractionResult, _init_worker, _progress_bar, _reason

__all__ = ["PART_ITEMS", "ShardItem", "ShardPart", "set_chunk_cache_size", "write_shards"]

#: items per part: what a killed writer can lose at most
PART_ITEMS = 4096
_TMP = ".writing-"
_HOST = socket.gethostname().replace(".", "_").replace("-", "_")


def _require_litdata() -> None:
    try:
        import litdata  # noqa: F401
    except ImportError as err:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            'streaming needs LitData: pip install "mtl_lightning[streaming]"'
        ) from err


class _ChunkCache:
    """Decoded chunks, least recently used evicted first (one per process)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.chunks: OrderedDict[tuple[str, int], list[Tensor]] = OrderedDict()
        self.decoded = 0  # chunks decoded in this process (tests and benchmarks read it)

    def get(self, part: ShardPart, chunk: int) -> list[Tensor]:
        key = (part.root, chunk)
        if key in self.chunks:
            self.chunks.move_to_end(key)
            return self.chunks[key]
        items = part.decode_chunk(chunk)
        self.decoded += 1
        self.chunks[key] = items
        while len(self.chunks) > self.size:
            self.chunks.popitem(last=False)
        return items


_CACHE = _ChunkCache()
_OPEN: list[ShardPart] = []  # the part whose LitData reader is open in this process


def set_chunk_cache_size(size: int) -> None:
    """Keep at most ``size`` decoded chunks in this process (and its loader workers)."""
    if size < 1:
        raise ValueError(f"the chunk cache must hold at least 1 chunk, got {size}")
    _CACHE.size = size
    while len(_CACHE.chunks) > size:
        _CACHE.chunks.popitem(last=False)


class ShardPart:
    """One LitData folder of items: its chunk boundaries, and a reader opened on first use."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        index = json.loads((Path(root) / "index.json").read_text())
        sizes = [int(c["chunk_size"]) for c in index["chunks"]]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._reader: Any = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:  # loader workers open their own reader
        return {"root": self.root, "starts": self.starts, "_reader": None}

    def chunk_of(self, item: int) -> int:
        """The chunk holding ``item``."""
        return int(np.searchsorted(self.starts, item, side="right")) - 1

    def decode_chunk(self, chunk: int) -> list[Tensor]:
        """Every item of ``chunk``, as float32 tensors ``[n_features, frames]``."""
        from litdata.streaming.sampler import ChunkedIndex

        if self._reader is None:
            from litdata import StreamingDataset

            # one reader open per process: LitData's keeps chunks memory-mapped and a window of
            # decoded items, which would add up over the parts of a large corpus
            if _OPEN and _OPEN[0] is not self:
                _OPEN.pop()._reader = None
            self._reader = StreamingDataset(self.root)
            _OPEN[:] = [self]
        start, stop = int(self.starts[chunk]), int(self.starts[chunk + 1])
        # by chunk and global index: a plain int or slice would be read as an index into this
        # rank's share of the dataset under DDP (LitData's own sharding, not used here)
        items = [self._reader[ChunkedIndex(i, chunk)] for i in range(start, stop)]
        return [torch.from_numpy(np.array(x["features"])) for x in items]


class ShardItem:
    """Where one utterance's features are stored: stands for the tensor until it is read.

    ``shape`` is known without reading (``(n_features, frames)``); :meth:`load` reads it.
    """

    __slots__ = ("chunk", "item", "part", "shape")

    def __init__(
        self, part: ShardPart, item: int, shape: tuple[int, int], chunk: int | None = None
    ) -> None:
        self.part, self.item, self.shape = part, item, shape
        self.chunk = part.chunk_of(item) if chunk is None else chunk

    @property
    def location(self) -> tuple[str, int]:
        """``(part folder, item)``: sorting by it reads every chunk once, in order."""
        return (self.part.root, self.item)

    @property
    def chunk_key(self) -> tuple[str, int]:
        """``(part folder, chunk)``: items with the same key are decoded together."""
        return (self.part.root, self.chunk)

    def load(self) -> Tensor:
        """The features, decoded with the rest of their chunk (kept in the chunk cache)."""
        items = _CACHE.get(self.part, self.chunk)
        return items[self.item - int(self.part.starts[self.chunk])]


def _extract_one(spec: FeatureSpec, path: Path) -> tuple[str | None, np.ndarray | None, float]:
    """``(error, features, audio seconds)`` of one file (in a worker process)."""
    if not path.is_file():
        return "file not found", None, 0.0
    try:
        if path.suffix.lower() in PRECOMPUTED_SUFFIXES:
            return None, load_precomputed(path).numpy(), 0.0
        features = spec.extract(path)
    except AudioDecodeError as err:
        return _reason(path, err), None, 0.0
    except (ImportError, MemoryError):  # the environment, not this file: stop the run
        raise
    except Exception as err:  # anything else one file triggers is that file's bad row
        return f"feature extraction failed ({type(err).__name__}: {_reason(path, err)})", None, 0.0
    seconds = features.shape[-1] * spec.hop_length / spec.sample_rate
    return None, features.numpy(), seconds if spec.kind != "egemaps" else features.shape[-1] * 0.01


def _key(name: str, path: Path, digest: str) -> str:
    return hashlib.sha1(f"{name}|{path.stat().st_size}|{digest}".encode()).hexdigest()


def _write_rank(path: Path) -> str:
    return hashlib.sha1(f"{path.name}|{path.stat().st_size}".encode()).hexdigest()


def _read_parts(root: Path) -> dict[str, ShardItem]:
    found: dict[str, ShardItem] = {}
    for part_dir in sorted(root.glob("part-*")):
        if not (part_dir / "items.json").is_file():
            continue
        part = ShardPart(part_dir)
        listing = json.loads((part_dir / "items.json").read_text())
        chunks = np.searchsorted(part.starts, np.arange(len(listing)), side="right") - 1
        for item, (entry, chunk) in enumerate(zip(listing, chunks.tolist(), strict=True)):
            key, n_features, frames = entry
            found[key] = ShardItem(part, item, (n_features, frames), chunk)
    return found


def _remove_stale(root: Path) -> None:
    """Temporary folders of writers on this host that no longer run (a killed write)."""
    for tmp in root.glob(f"{_TMP}*"):
        host, _, pid = tmp.name.removeprefix(_TMP).rpartition("-")
        if host == _HOST and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _write_part(root: Path, items: list[tuple[str, np.ndarray]], chunk_bytes: str | int) -> None:
    from litdata.streaming.writer import BinaryWriter

    tmp = root / f"{_TMP}{_HOST}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = BinaryWriter(str(tmp), chunk_bytes=chunk_bytes)
    for i, (_, x) in enumerate(items):
        writer[i] = {"features": x}
    writer.done()
    writer.merge()
    listing = [[key, int(x.shape[0]), int(x.shape[1])] for key, x in items]
    (tmp / "items.json").write_text(json.dumps(listing))
    # named by time, host and process: writers sharing the folder never collide (a key written
    # twice is harmless: the later part's copy is read)
    os.replace(tmp, root / f"part-{time.time_ns()}-{_HOST}-{os.getpid()}")


def write_shards(
    paths: Sequence[Path],
    spec: FeatureSpec,
    shard_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
    chunk_bytes: str | int = "16MB",
    names: Sequence[str] | None = None,
) -> ExtractionResult:
    """Handles to the features of every path, computing (and appending) those not in the shards.

    ``names`` identify the files in the shards with their sizes (default: the paths as given;
    the datamodule passes the manifest's path cells, so that a copied corpus matches).

    ``features`` holds a :class:`ShardItem` per path, or ``None`` where the file failed
    (``errors`` says why); ``cached`` counts the paths found in the shards, ``computed`` and
    ``precomputed`` those written now.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); np.save(d / "a.npy", np.ones((3, 5), "f4"))
        >>> result = write_shards([d / "a.npy", d / "gone.wav"], FeatureSpec(), d / "shards",
        ...                       progress=False)
        >>> result.features[0].shape, result.features[0].load().sum().item(), result.errors
        ((3, 5), 15.0, {1: 'file not found'})
        >>> write_shards([d / "a.npy"], FeatureSpec(), d / "shards", progress=False).cached
        1
    """
    _require_litdata()
    digest = FeatureCache(shard_dir, spec.params()).params_digest
    root = Path(shard_dir) / digest
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    names = [str(p) for p in paths] if names is None else list(names)
    keys = [_key(n, p, digest) if p.is_file() else None for n, p in zip(names, paths, strict=True)]
    found = _read_parts(root)
    result = ExtractionResult(features=[None] * len(paths))
    # written in an order fixed by each file's name and size: mixed, and the same for every
    # copy of a corpus wherever it lies
    missing = {k: i for i, k in enumerate(keys) if k is not None and k not in found}
    todo = sorted(missing.items(), key=lambda ki: _write_rank(paths[ki[1]]))
    result.errors |= {i: "file not found" for i, k in enumerate(keys) if k is None}
    if todo:
        _compute(paths, spec, root, [(k, i) for k, i in todo], workers, progress, chunk_bytes,
                 result)  # fmt: skip
        found = _read_parts(root)
    failed = {keys[i]: e for i, e in result.errors.items()}
    for i, k in enumerate(keys):
        if k is not None and k in found:
            result.features[i] = found[k]
        elif k is not None:  # a repeated path: the error of the row that was computed
            result.errors[i] = failed[k]
    result.cached = sum(x is not None for x in result.features) - result.computed
    result.cached -= result.precomputed
    (root / "spec.json").write_text(json.dumps(spec.params(), indent=2, default=str) + "\n")
    return result


def _outputs(
    paths: Sequence[Path], spec: FeatureSpec, todo: list[tuple[str, int]], workers: int
) -> Iterator[tuple[str, int, tuple[str | None, np.ndarray | None, float]]]:
    files = [paths[i] for _, i in todo]
    if workers <= 1:
        for (key, i), path in zip(todo, files, strict=True):
            yield key, i, _extract_one(spec, path)
        return
    methods = mp.get_all_start_methods()
    context = mp.get_context("fork" if "fork" in methods else "spawn")
    chunk = max(1, min(64, len(todo) // (8 * workers)))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        done = pool.map(partial(_extract_one, spec), files, chunksize=chunk)
        for (key, i), out in zip(todo, done, strict=True):
            yield key, i, out


def _compute(
    paths: Sequence[Path],
    spec: FeatureSpec,
    root: Path,
    todo: list[tuple[str, int]],
    workers: int,
    progress: bool,
    chunk_bytes: str | int,
    result: ExtractionResult,
) -> None:
    """Compute ``todo`` (``(key, row)`` sorted by key) and write them in parts."""
    bar = _progress_bar(len(todo), f"{spec.kind} shards", progress)
    pending: list[tuple[str, np.ndarray]] = []
    for key, i, (error, x, seconds) in _outputs(paths, spec, todo, workers):
        bar.update(1)
        if error is not None or x is None:
            result.errors[i] = error or "no features"
            continue
        pending.append((key, np.ascontiguousarray(x, dtype=np.float32)))
        if paths[i].suffix.lower() in PRECOMPUTED_SUFFIXES:
            result.precomputed += 1
        else:
            result.computed += 1
            result.seconds += seconds
        if len(pending) == PART_ITEMS:
            _write_part(root, pending, chunk_bytes)
            pending = []
    if pending:
        _write_part(root, pending, chunk_bytes)
    bar.close()
