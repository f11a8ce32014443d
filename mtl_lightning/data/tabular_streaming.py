"""`StreamingTabularDataModule`: the tabular datamodule for files larger than memory.

Everything :class:`~mtl_lightning.data.tabular_files.TabularDataModule` does (task declarations,
vocabulary, conditions, missing labels, the split column, split files or a stratified split,
standardisation on the training split, every bad-row report with its line, rare and
near-duplicate labels, duplicate rows, checkpoints, labelled predictions) is done the same way,
with the same results; the table is read twice a block at a time instead of whole:

1. :func:`~mtl_lightning.data.table_scan.scan_tables` checks every row and keeps a few bytes per
   row (a digest of its features, its line, a code per label), then reports, builds the
   vocabulary and splits;
2. :func:`~mtl_lightning.data.table_shards.write_splits` writes the kept rows of each split into
   LitData shards, in blocks of ``block_rows`` rows, and computes the training statistics.

Both are done once per file and settings: the shards (``shard_dir``, by default
``.table_shards`` beside the file) are reused by later runs as long as the file's path, size
and modification time are the same. Training reads blocks ``lanes`` at a time, the rows of
``shuffle_window`` blocks per lane shuffled together, in an order that does not depend on the
number of processes; a run resumed mid-epoch continues it (see
:class:`~mtl_lightning.data.shard_order.ShardSampler`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from mtl_lightning.checks import warn_missing_class_counts
from mtl_lightning.data.base import ResumableDataLoader, _require_samples
from mtl_lightning.data.manifest import ManifestError
from mtl_lightning.data.shard_order import ShardSampler
from mtl_lightning.data.shards import _HOST, _TMP, _alive, _require_litdata, set_chunk_cache_size
from mtl_lightning.data.table_predict import write_predict
from mtl_lightning.data.table_rows import FeatureStats
from mtl_lightning.data.table_scan import scan_tables
from mtl_lightning.data.table_shards import TableShardDataset, write_splits
from mtl_lightning.data.tabular_files import TabularDataModule
from mtl_lightning.data.vocab import LabelVocab

__all__ = ["StreamingTabularDataModule"]

_VERSION = 1


class StreamingTabularDataModule(TabularDataModule):
    """:class:`~mtl_lightning.data.tabular_files.TabularDataModule` over rows streamed from LitData
    shards, for tables larger than memory (CSV/TSV, Parquet or ``.npy``; not ``.npz``).

    Takes every argument of the in-memory datamodule, and:

    Args:
        tasks: Task declarations (as for ``TabularDataModule``).
        shard_dir: Folder of the shards (default ``.table_shards`` beside the table): local, or
            a folder every node reads.
        block_rows: Rows per stored block: the unit read and shuffled together.
        chunk_bytes: Size of one LitData chunk file (e.g. ``"16MB"``): what a writer buffers
            and a reader maps, a few per split.
        lanes: Blocks read side by side in training; a multiple of the number of processes
            lets each process read its own blocks only.
        shuffle_window: Blocks per lane whose rows are shuffled together.
        **kwargs: The arguments of :class:`~mtl_lightning.data.tabular_files.TabularDataModule`.

    Memory: ``(lanes * shuffle_window + 2)`` decoded blocks per process and loader worker, the
    epoch's order (8 bytes per training row); while the shards are written, about
    ``26 + 4 * classification tasks`` bytes per row.

    Example:
        >>> import tempfile
        >>> from mtl_lightning.data import write_example_table
        >>> path = write_example_table(f"{tempfile.mkdtemp()}/t.csv", n=200)
        >>> dm = StreamingTabularDataModule([{"name": f"y{k}"} for k in range(1, 6)], path=str(path),
        ...                                 block_rows=16, batch_size=32)
        >>> dm.setup("fit"); len(dm.train_set), next(iter(dm.train_dataloader()))["features"].shape
        (140, torch.Size([32, 20]))
    """

    def __init__(
        self,
        tasks: list[dict[str, Any]],
        shard_dir: str | None = None,
        block_rows: int = 1024,
        chunk_bytes: str = "16MB",
        lanes: int = 4,
        shuffle_window: int = 4,
        **kwargs: Any,
    ) -> None:
        if block_rows < 1 or lanes < 1 or shuffle_window < 1:
            raise ValueError(
                "block_rows, lanes and shuffle_window must be >= 1, got "
                f"{block_rows}, {lanes} and {shuffle_window}"
            )
        _require_litdata()
        super().__init__(tasks, **kwargs)
        first = next(iter(self._files().values()))
        self.shard_dir = Path(shard_dir) if shard_dir else first.parent / ".table_shards"
        self.block_rows, self.chunk_bytes = block_rows, chunk_bytes
        self.lanes, self.shuffle_window = lanes, shuffle_window
        self._meta: dict[str, Any] | None = None
        self._root: Path | None = None
        self._predict_root: Path | None = None
        self._lines: np.ndarray | None = None
        self._warned = False

    # ------------------------------------------------------------------ shards
    def prepare_data(self) -> None:
        """Write the shards that are not there yet (Lightning runs this on one process per node)."""
        if self.trainer is not None and self.trainer.predicting:
            self._setup_predict()
        else:
            self._shards()

    def _key(self, files: dict[str, Path], extra: Any) -> str:
        h = self.hparams
        settings = ("features", "columns", "split_column", "val_fraction", "test_fraction", "seed")
        settings += ("allow_duplicates", "on_error", "encoding", "min_label_count")
        settings += ("near_duplicate_check", "standardize")
        described = {
            "version": _VERSION,
            "files": {
                k: [str(p), p.stat().st_size, p.stat().st_mtime_ns] for k, p in files.items()
            },
            "tasks": [dataclasses.asdict(d) for d in self.decls],
            "settings": {k: h[k] for k in settings},
            "stratify": self.stratify,
            "block_rows": self.block_rows,
            "extra": extra,
        }
        text = json.dumps(described, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:20]

    def _shards(self) -> dict[str, Any]:
        """The shards of the splits (written if missing) and their description."""
        if self._meta is not None:
            return self._meta
        files = self._files()
        restored = None if self._restored is None else self._restored["vocab"].names
        root = self.shard_dir / self._key(files, None)
        meta = _read_meta(root)
        if restored is not None and (meta is None or not _fits(meta["seen"], restored)):
            # labels the checkpoint does not know are bad rows: read with its classes
            root = self.shard_dir / self._key(files, restored)
            meta = _read_meta(root)
        if meta is None:
            known = (
                self._known() if restored is not None else {d.name: d.classes for d in self.decls}
            )
            meta = self._write(root, files, known)
        self._root, self._meta = root, meta
        return meta

    def _write(self, root: Path, files: dict[str, Path], known: dict) -> dict[str, Any]:
        h = self.hparams
        features = None if self._restored is None else self._restored["features"]
        scan = scan_tables(files, h, self.decls, known, self.stratify, features)
        with _Staging(root) as tmp:
            out = write_splits(
                files, h, self.decls, known, scan, tmp, self.block_rows, self.chunk_bytes
            )
            mean, std = out["mean"], out["std"]
            stats = FeatureStats(
                scan.features, np.zeros(len(scan.features)), np.ones(len(scan.features))
            )
            if h.standardize and mean is not None:
                stats = FeatureStats(scan.features, mean, np.where(std > 0, std, 1.0))
            meta = {
                "version": _VERSION,
                "features": scan.features,
                "vocab": scan.vocab.names,
                "seen": scan.seen,
                "block_rows": self.block_rows,
                "splits": out["splits"],
                "mean": stats.mean.tolist(),
                "std": stats.std.tolist(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
        return meta

    # ------------------------------------------------------------------ tasks
    @property
    def vocab(self) -> LabelVocab:
        if self._restored is not None:
            return self._restored["vocab"]
        return LabelVocab(self._shards()["vocab"])

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        # the blocks training reads side by side, one for evaluation, one spare
        set_chunk_cache_size(self.lanes * self.shuffle_window + 2)
        super().setup(stage)

    def _build(self) -> None:
        meta = self._shards()
        names = meta["features"]
        if self._restored is not None:
            r = self._restored
            if list(r["features"]) != names:
                raise ManifestError(
                    f"{next(iter(self._files().values()))}: the features {names} differ from "
                    f"the checkpoint's {list(r['features'])}"
                )
            self.stats = FeatureStats(names, r["mean"].numpy(), r["std"].numpy())
        else:
            self.stats = FeatureStats(names, np.asarray(meta["mean"]), np.asarray(meta["std"]))
        remap = self._remap(meta["vocab"])
        for split, info in meta["splits"].items():
            if info["rows"] == 0:
                raise ManifestError(f"{self._files().get(split)}: no usable rows for {split}")
            assert self._root is not None
            dataset = TableShardDataset(
                self._root / split, info["rows"], self.block_rows, self.stats.mean,
                self.stats.std, self._task_kinds(), remap,
            )  # fmt: skip
            setattr(self, f"{split}_set", dataset)

    def _task_kinds(self) -> list[tuple[str, str, int]]:
        return [(d.name, d.kind, len(d.columns)) for d in self.decls]

    def _remap(self, stored: dict[str, list[str]]) -> dict[str, np.ndarray]:
        """Stored class indices to those of the vocabulary in use (a checkpoint's)."""
        active = self.vocab.names
        return {
            t: np.asarray([active[t].index(n) for n in names], dtype=np.int64)
            for t, names in stored.items()
            if names != active.get(t)
        }

    def check_splits(self) -> None:
        """Warn once for a class that validation or test data has and training data lacks."""
        if not self.check_data or self._meta is None or self._warned or self.train_set is None:
            return
        remap = self._remap(self._meta["vocab"])

        def counts(split: str) -> dict[str, dict[int, int]]:
            out = {}
            for task, by_class in self._meta["splits"][split]["classes"].items():  # type: ignore[index]
                m = remap.get(task)
                out[task] = {
                    int(m[int(c)]) if m is not None else int(c): n for c, n in by_class.items()
                }
            return out

        others = {s: counts(s) for s in self._meta["splits"] if s != "train"}
        warn_missing_class_counts(counts("train"), others, self.tasks)
        self._warned = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._meta, self._warned = None, False
        super().load_state_dict(state_dict)

    # ------------------------------------------------------------------ predict
    def _setup_predict(self) -> None:
        if self.predict_set is not None:
            return
        if self._restored is None and self.stats is None:
            self._build()
        if self.stats is None:
            r = self._restored
            assert r is not None
            self.stats = FeatureStats(r["features"], r["mean"].numpy(), r["std"].numpy())
        h = self.hparams
        file = h.predict_path or h.path or h.test_path
        if file is None:
            raise ValueError("predict needs a file: set predict_path (or test_path)")
        path = Path(file)
        root = self.shard_dir / self._key({"predict": path}, ["predict", self.stats.features])
        meta = _read_meta(root)
        if meta is None:
            with _Staging(root) as tmp:
                meta = write_predict(path, h, self.stats.features, self.decls, tmp, self.block_rows,
                                     self.chunk_bytes)  # fmt: skip
                (tmp / "meta.json").write_text(json.dumps(meta))
        self._predict_root, self._unit = root, meta["unit"]
        self._lines = np.load(root / "lines.npy", mmap_mode="r")
        self.predict_set = TableShardDataset(  # type: ignore[assignment]
            root / "predict", meta["rows"], self.block_rows, self.stats.mean, self.stats.std,
            self._task_kinds(), indexed=True, labelled=False,
        )  # fmt: skip

    def row_path(self, row: int) -> str:
        """Where predict row ``row`` (a batch's ``index``) is: ``"line 5"`` / ``"row 5"``."""
        if self._lines is None:
            raise RuntimeError("call setup('predict') first")
        return f"{self._unit} {int(self._lines[row])}"

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        """Blocks in a seeded order per epoch, the same for any number of processes, resumable."""
        o, train = self._loader_options(), self._split_set("train")
        _require_samples(train, "training")
        sampler = ShardSampler(
            train,
            self.block_rows,
            self.lanes,
            self.shuffle_window,
            seed=o.seed,  # type: ignore[arg-type]
        )
        return ResumableDataLoader(
            train, batch_size=o.batch_size, sampler=sampler, num_workers=o.num_workers,
            persistent_workers=o.num_workers > 0,
        )  # fmt: skip


def _read_meta(root: Path) -> dict[str, Any] | None:
    path = root / "meta.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return meta if meta.get("version") == _VERSION else None


def _fits(seen: dict[str, list[str]], known: dict[str, list[str]]) -> bool:
    """Whether every label of the shards is a class of ``known``."""
    return all(set(labels) <= set(known.get(t, [])) for t, labels in seen.items())


class _Staging:
    """A temporary folder beside ``root``, renamed to ``root`` when the block ends without an
    error (removed otherwise); folders of killed writers on this host are removed first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root.parent / f"{_TMP}{root.name}-{_HOST}-{os.getpid()}"

    def __enter__(self) -> Path:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.parent.glob(f"{_TMP}*"):
            _, host, pid = tmp.name.rsplit("-", 2)
            if host == _HOST and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            os.replace(self.tmp, self.root)
        except OSError:  # another writer finished first: its copy is the same
            shutil.rmtree(self.tmp, ignore_errors=True)
