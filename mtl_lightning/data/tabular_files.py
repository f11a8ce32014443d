"""`TabularDataModule`: tasks declared over the columns of CSV/TSV, Parquet or NumPy files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.data.in_memory import InMemoryDataModule
from mtl_lightning.data.manifest import SPLITS, ManifestError, OnError, check_on_error
from mtl_lightning.data.splits import stratified_split
from mtl_lightning.data.table_example import write_example_table
from mtl_lightning.data.table_files import read_table
from mtl_lightning.data.table_rows import (
    FeatureStats,
    Part,
    build_vocab,
    check_labels,
    mark_duplicates,
    predict_part,
    read_part,
    report_parts,
    require_rows,
    resolve_features,
)
from mtl_lightning.data.table_tasks import TaskDecl, parse_tasks
from mtl_lightning.data.vocab import LabelVocab
from mtl_lightning.tasks import TaskSpec

__all__ = ["TabularDataModule", "write_example_table"]


class TabularDataModule(InMemoryDataModule):
    """Tasks declared over the columns of one table file, or of given train/val/test files.

    Rows are features plus one or more label columns per task (see
    :mod:`~mtl_lightning.data.table_tasks` for the declarations and :mod:`~.table_files` for the
    formats). Every bad row (a cell that is not a number, NaN/inf, a label outside declared
    ``classes``/``size``, a bad multilabel cell, an unknown split, a duplicate feature row) is
    reported with its line in one :class:`~mtl_lightning.data.manifest.ManifestError`, or left
    out with a warning (``on_error: skip``); rare and near-duplicate class labels are an error
    (:mod:`~mtl_lightning.data.label_checks`). Class names are saved as ``label_vocab.json`` in
    the run directory and, with the feature statistics, in checkpoints; ``restore_from`` (set
    by the CLI from ``--ckpt_path`` for validate/test/predict) reuses them.

    Args:
        tasks: Task declarations, e.g. ``[{name: y1}, {name: y2, kind: regression}]``.
        path: One file, split by ``split_column`` or at random (stratified).
        train_path: A training file (instead of ``path``), with ``val_path`` and ``test_path``.
        val_path: The validation file.
        test_path: The test file (optional; ``test`` needs it).
        predict_path: The file ``predict`` reads (default ``path``, else ``test_path``): every
            row, features only (label columns may be absent); batches carry ``index``, and
            :meth:`row_path` names its line for ``LabelledPredictionWriter``.
        features: Column names, a name prefix (``"x_"``), or ``None``: every other column.
        columns: Names of a NumPy file's 2-D array columns (default ``x0, x1, ...``).
        split_column: Column of ``train``/``val``/``test`` per row (with ``path``).
        val_fraction: Fraction of rows for validation (random split).
        test_fraction: Fraction of rows for test (random split).
        stratify: Task whose class proportions the random split keeps (default: the first
            classification main task).
        seed: Seed of the split and of the training order.
        standardize: Standardise features with the training split's mean and std.
        min_label_count: A class label seen in fewer rows is an error (1: no check).
        near_duplicate_check: Labels one edit apart, or equal but for case/space, are an error.
        allow_duplicates: Keep rows whose features repeat an earlier row's.
        on_error: ``raise`` (default) or ``skip`` bad rows.
        encoding: Text encoding of CSV/TSV files (default UTF-8, or UTF-16 with its BOM).
        batch_size: Batch size of every loader.
        num_workers: Loader workers.
        restore_from: A checkpoint of a run with this datamodule: its classes and statistics.

    Raises:
        ManifestError: Bad rows, missing columns, suspicious labels or an empty split.
        FileNotFoundError: A file does not exist.

    Example (NumPy arrays to a CSV with a header, then the datamodule):
        >>> import tempfile, numpy as np
        >>> path = f"{tempfile.mkdtemp()}/five_tasks.csv"
        >>> rng = np.random.default_rng(0)
        >>> X_train, y = rng.normal(size=(60, 20)), rng.integers(0, 3, size=(60, 5))
        >>> header = ",".join([f"x{j}" for j in range(20)] + [f"y{k}" for k in range(1, 6)])
        >>> np.savetxt(path, np.column_stack([X_train, y]), "%.6g", ",", header=header, comments="")
        >>> dm = TabularDataModule([{"name": f"y{k}"} for k in range(1, 6)], path=path)
        >>> dm.setup("fit"); [(t.name, t.size) for t in dm.tasks][:2], dm.train_set.features.shape
        ([('y1', 3), ('y2', 3)], torch.Size([42, 20]))
    """

    train_set: TensorTaskDataset | None
    val_set: TensorTaskDataset | None
    test_set: TensorTaskDataset | None
    _predict_from = "predict"

    def __init__(
        self,
        tasks: list[dict[str, Any]],
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        features: list[str] | str | None = None,
        columns: list[str] | None = None,
        split_column: str | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        stratify: str | None = None,
        seed: int = 0,
        standardize: bool = True,
        min_label_count: int = 2,
        near_duplicate_check: bool = True,
        allow_duplicates: bool = False,
        on_error: OnError = "raise",
        encoding: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        restore_from: str | None = None,
    ) -> None:
        super().__init__()
        # the model logs the tasks (TaskSpecs); the same key here would clash when merged
        self.save_hyperparameters(ignore=["tasks"])
        if (path is None) == (train_path is None) or (train_path is not None) != (
            val_path is not None
        ):
            raise ValueError(
                "give path (one file), or train_path and val_path (and test_path); got "
                f"path={path!r}, train_path={train_path!r}, val_path={val_path!r}"
            )
        if path is None and split_column is not None:
            raise ValueError("split_column is for one file (path); the split files are the split")
        check_on_error(on_error)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.decls: list[TaskDecl] = parse_tasks(tasks)
        self.stratify = self._check_stratify(stratify)
        self.predict_set: TensorTaskDataset | None = None
        self._predict_part: Part | None = None
        self._parts: dict[str, Part] | None = None
        self._feature_names: list[str] = []
        self._vocab: LabelVocab | None = None
        self.stats: FeatureStats | None = None
        self._restored: dict[str, Any] | None = None
        if restore_from is not None:
            self._restored = self._checkpoint_state(restore_from)

    def _check_stratify(self, stratify: str | None) -> str | None:
        classes = [d.name for d in self.decls if d.is_classification]
        if stratify is None:
            main = [d.name for d in self.decls if d.is_classification and d.role == "main"]
            return (main or [None])[0]
        if stratify not in classes:
            raise ValueError(
                f"stratify: {stratify!r} is not a classification task; those are {classes}"
            )
        return stratify

    # ------------------------------------------------------------------ reading
    def _files(self) -> dict[str, Path]:
        h = self.hparams
        if h.path is not None:
            return {"all": Path(h.path)}
        named = {"train": h.train_path, "val": h.val_path, "test": h.test_path}
        return {k: Path(v) for k, v in named.items() if v is not None}

    def _known(self) -> dict[str, list[str] | None]:
        """Classes fixed before reading: the checkpoint's, else declared ``classes``/``size``."""
        if self._restored is not None:
            names = self._restored["vocab"].names
            return {d.name: names.get(d.name) for d in self.decls}
        return {d.name: d.classes for d in self.decls}

    def _read(self) -> dict[str, Part]:
        """The checked rows of each split (bad rows reported, labels checked), read once."""
        if self._parts is not None:
            return self._parts
        h = self.hparams
        tables = {k: read_table(p, h.encoding, h.columns) for k, p in self._files().items()}
        for table in tables.values():
            require_rows(table)
        reserved = [c for d in self.decls for c in d.columns] + [h.split_column] * (
            h.split_column is not None
        )
        first = next(iter(tables.values()))
        names = self._feature_names = resolve_features(first, h.features, reserved)
        if self._restored is not None and self._restored["features"] != names:
            raise ManifestError(
                f"{first.source}: the features {names} differ from the checkpoint's "
                f"{self._restored['features']}"
            )
        known = self._known()
        parts = {
            k: read_part(t, names, self.decls, known, h.split_column) for k, t in tables.items()
        }
        if not h.allow_duplicates:
            mark_duplicates(parts)
        parts = report_parts(parts, h.on_error)
        check_labels(parts, self.decls, h.min_label_count, h.near_duplicate_check)
        self._parts = self._split(parts)
        return self._parts

    def _split(self, parts: dict[str, Part]) -> dict[str, Part]:
        """``{train, val, test}`` parts: the files as given, the split column or a random split."""
        h = self.hparams
        if "all" not in parts:
            return parts
        part = parts["all"]
        if h.split_column is not None:
            names = list(part.split or [])
        else:
            strata = ["" for _ in range(len(part.table))]
            if self.stratify is not None:
                strata = [v or "<missing>" for v in part.labels[self.stratify]]
            names = stratified_split(strata, h.val_fraction, h.test_fraction, h.seed).names
        out = {}
        for split in SPLITS:
            rows = [i for i, n in enumerate(names) if n == split]
            if not rows:
                raise ManifestError(
                    f"{part.table.source}: the {split} split has no rows ({len(names)} usable "
                    f"row(s); val_fraction {h.val_fraction}, test_fraction {h.test_fraction}"
                    f"{', split_column ' + repr(h.split_column) if h.split_column else ''})"
                )
            out[split] = part.keep(rows)
        return out

    # ------------------------------------------------------------------ tasks
    @property
    def vocab(self) -> LabelVocab:
        """Class names per classification task: the checkpoint's, declared, or those seen."""
        if self._restored is not None:
            return self._restored["vocab"]
        if self._vocab is None:
            self._vocab = build_vocab(self._read(), self.decls)
        return self._vocab

    @property
    def tasks(self) -> list[TaskSpec]:
        specs = []
        vocab = self.vocab
        for d in self.decls:
            if not d.is_classification:
                specs.append(d.spec(len(d.columns), self._only_when(d)))
                continue
            if d.name not in vocab.names:
                raise ManifestError(
                    f"task {d.name!r} has no classes in the restored vocabulary {vocab.names}"
                )
            names = vocab.names[d.name]
            if len(names) < 2:
                raise ManifestError(
                    f"task {d.name!r} (column {d.columns[0]!r}) needs >= 2 classes; the data "
                    f"has {len(names)}: {names}"
                )
            specs.append(d.spec(len(names), self._only_when(d)))
        return specs

    def _only_when(self, d: TaskDecl) -> dict[str, list[int]] | None:
        if d.only_when is None:
            return None
        other, names = d.only_when
        return self.vocab.condition(d.name, other, names)

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self._setup_predict()
            return
        if self.train_set is None and self.val_set is None:
            self._build()
        if stage == "fit" and self.trainer is not None:
            log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank asks
            if self.trainer.is_global_zero and log_dir is not None:
                self._write_run_files(Path(log_dir))

    def _build(self) -> None:
        parts = self._read()
        names = self._feature_names
        if self._restored is not None:
            r = self._restored
            self.stats = FeatureStats(names, r["mean"].numpy(), r["std"].numpy())
        elif "train" in parts:
            self.stats = FeatureStats.fit(names, parts["train"].features, self.hparams.standardize)
        for split, part in parts.items():
            setattr(self, f"{split}_set", self._dataset(part))

    def _setup_predict(self) -> None:
        """``predict_set``: every row of the predict file, scaled with the checkpoint's (or,
        without one, the training split's) statistics."""
        if self.predict_set is not None:
            return
        if self._restored is None and self.stats is None:
            self._build()  # no checkpoint: the training data's statistics and classes
        if self.stats is None:
            r = self._restored
            assert r is not None
            self.stats = FeatureStats(r["features"], r["mean"].numpy(), r["std"].numpy())
        h = self.hparams
        file = h.predict_path or h.path or h.test_path
        if file is None:
            raise ValueError("predict needs a file: set predict_path (or test_path)")
        table = read_table(file, h.encoding, h.columns)
        self._predict_part = predict_part(table, self.stats.features, self.decls, h.on_error)
        self.predict_set = self._dataset(self._predict_part, indexed=True)

    def row_path(self, row: int) -> str:
        """Where predict row ``row`` (a batch's ``index``) is: ``"line 5"`` / ``"row 5"``."""
        if self._predict_part is None:
            raise RuntimeError("call setup('predict') first")
        return self._predict_part.table.where(row)

    def _dataset(self, part: Part, indexed: bool = False) -> TensorTaskDataset:
        assert self.stats is not None
        x = (part.features - self.stats.mean) / self.stats.std
        targets = {}
        for d in self.decls:
            values = part.labels[d.name]
            if d.is_classification:
                targets[d.name] = self.vocab.encode(d.name, values)  # type: ignore[arg-type]
            else:
                targets[d.name] = torch.as_tensor(np.asarray(values), dtype=torch.float32)
        kind = _IndexedDataset if indexed else TensorTaskDataset
        return kind(torch.as_tensor(x, dtype=torch.float32), targets)

    def _write_run_files(self, run: Path) -> None:
        run.mkdir(parents=True, exist_ok=True)
        self.vocab.save(run / "label_vocab.json")
        if self.stats is not None:
            (run / "feature_stats.json").write_text(self.stats.to_json())

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Vocabulary and feature statistics (stored in checkpoints)."""
        if self.stats is None:
            self.setup()
        assert self.stats is not None
        return {"vocab": self.vocab.to_dict(), **self.stats.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Use a checkpoint's vocabulary and statistics; the datasets are built again."""
        self._restored = self._as_restored(state_dict)
        self._parts, self._vocab = None, None
        if self.train_set is not None or self.val_set is not None:
            self.train_set = self.val_set = self.test_set = None
            self._build()
            self._checked_splits = set()
            self.check_splits()
        if self.predict_set is not None:
            self.predict_set, self.stats = None, None
            self._setup_predict()

    def _checkpoint_state(self, path: str) -> dict[str, Any]:
        return self._as_restored(self._saved_state(path))

    @staticmethod
    def _as_restored(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "vocab": LabelVocab(state["vocab"])}

    # ------------------------------------------------------------------ loaders
    def _split_set(self, split: str) -> TensorTaskDataset:
        dataset = getattr(self, f"{split}_set")
        if dataset is None:
            hint = " (give test_path)" if split == "test" and self.train_set is not None else ""
            raise RuntimeError(f"no {split} set{hint}: call setup() before requesting a loader")
        return dataset


class _IndexedDataset(TensorTaskDataset):
    """Items also carry ``index``, their row (for ``LabelledPredictionWriter``)."""

    def __getitem__(self, index: int) -> dict[str, object]:
        return {**super().__getitem__(index), "index": index}
