"""The first pass of a streamed table: every row checked as the in-memory path checks it, a block
at a time, keeping a few bytes per usable row (no features, no cells).

:func:`scan_tables` reads each file once with
:func:`~mtl_lightning.data.table_blocks.iter_table_blocks` and runs the in-memory checks on each
block (:func:`~mtl_lightning.data.table_rows.read_part`): cells that are not numbers, labels
outside the declared classes, bad multilabel cells, unknown splits. It keeps, per usable row, a
16-byte digest of its features (duplicates), its line, and a code per classification label; then
it marks duplicates, reports the bad rows of each file in one error (or leaves them out), checks
rare and near-duplicate labels, builds the vocabulary and assigns the split, with the same
results and messages as :class:`~mtl_lightning.data.tabular_files.TabularDataModule`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtl_lightning.data.label_checks import LabelPlaces
from mtl_lightning.data.manifest import SPLITS, ManifestError, report_problems
from mtl_lightning.data.splits import SPLIT_NAMES, stratified_codes
from mtl_lightning.data.table_blocks import iter_table_blocks
from mtl_lightning.data.table_files import Table, TableProblem
from mtl_lightning.data.table_rows import (
    raise_label_problems,
    read_part,
    resolve_features,
    vocab_of,
)
from mtl_lightning.data.table_tasks import TaskDecl
from mtl_lightning.data.vocab import LabelVocab

__all__ = ["READ_ROWS", "Scan", "scan_tables"]

#: rows read (as cells) at a time
READ_ROWS = 8192


@dataclass
class _File:
    source: Path
    unit: str = "line"
    problems: list[TableProblem] = field(default_factory=list)
    rows: int = 0  # rows read, good and bad


@dataclass
class Scan:
    """What the first pass found: per file, its usable rows; over all of them, in file order,
    whether each is kept (not a duplicate) and the split of each kept row."""

    features: list[str]
    files: dict[str, _File]
    usable: dict[str, int]  # rows without a problem of their own, per file
    kept: np.ndarray  # bool per usable row (of all files, in order): not a duplicate
    split: np.ndarray  # uint8 per kept row: 0 train, 1 val, 2 test
    vocab: LabelVocab
    seen: dict[str, list[str]]  # the labels of the kept rows, per classification task


class _Rows:
    """Per usable row: features digest, line, file, and a code per classification label."""

    def __init__(self, tasks: Sequence[TaskDecl], split_column: str | None) -> None:
        self.classes = [t.name for t in tasks if t.is_classification]
        self.names: dict[str, dict[str, int]] = {t: {} for t in self.classes}
        self.pieces: dict[str, list[np.ndarray]] = {k: [] for k in ("key", "line", "file")}
        self.pieces |= {f"c:{t}": [] for t in self.classes} | {"split": []}
        self.split_column = split_column

    def add(self, part: Any, good: np.ndarray, file: int) -> None:
        x = part.features[good]
        digests = b"".join(hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in x)
        self.pieces["key"].append(np.frombuffer(digests, dtype="S16"))
        self.pieces["line"].append(np.asarray(part.table.lines, dtype=np.int64)[good])
        self.pieces["file"].append(np.full(len(good), file, dtype=np.uint8))
        for task in self.classes:
            codes = self.names[task]
            labels = part.labels[task]
            values = [codes.setdefault(v, len(codes)) if v is not None else -1 for v in
                      (labels[i] for i in good.tolist())]  # fmt: skip
            self.pieces[f"c:{task}"].append(np.asarray(values, dtype=np.int32))
        if self.split_column is not None:
            split = [SPLITS.index(part.split[i]) for i in good.tolist()]
            self.pieces["split"].append(np.asarray(split, dtype=np.uint8))

    def column(self, name: str, dtype: Any) -> np.ndarray:
        pieces = self.pieces[name]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def scan_tables(
    files: Mapping[str, Path],
    h: Any,
    tasks: Sequence[TaskDecl],
    known: Mapping[str, Sequence[str] | None],
    stratify: str | None,
    restored_features: Sequence[str] | None = None,
) -> Scan:
    """Check every row of ``files`` (``{"all": path}`` or ``{"train", "val"[, "test"]}``) with
    the datamodule's settings ``h`` (its hyperparameters); raise as the in-memory path does."""
    rows = _Rows(tasks, h.split_column)
    found: dict[str, _File] = {}
    usable: dict[str, int] = {}
    features: list[str] | None = None
    reserved = [c for t in tasks for c in t.columns] + [h.split_column] * (
        h.split_column is not None
    )
    for index, (name, path) in enumerate(files.items()):
        file, bad_rows, usable[name] = _File(Path(path)), [], 0
        for block in iter_table_blocks(path, h.encoding, h.columns, READ_ROWS):
            file.unit = block.unit
            if features is None:
                features = resolve_features(block, h.features, reserved)
                _check_restored(block, features, restored_features)
            part = read_part(block, features, tasks, known, h.split_column)
            file.problems += block.problems
            bad_rows += [block.problem(i, "; ".join(r)) for i, r in sorted(part.bad.items())]
            good = np.asarray([i for i in range(len(block)) if i not in part.bad], np.int64)
            rows.add(part, good, index)
            file.rows += len(block)
            usable[name] += len(good)
        if file.rows == 0 and not file.problems:
            raise ManifestError(f"{path}: only a header, no data rows")
        file.problems += bad_rows
        found[name] = file
    assert features is not None
    kept = _duplicates(rows, found, h.allow_duplicates)
    _report(found, usable, kept, h.on_error)
    seen, places = _labels(rows, kept, found, tasks)
    checked = [t.name for t in tasks if t.is_classification and t.check_labels]
    messages = [
        m for t in checked for m in places[t].problems(t, h.min_label_count, h.near_duplicate_check)
    ]
    raise_label_problems([f.source for f in found.values()], messages)
    vocab = vocab_of({t: list(v) for t, v in seen.items()}, tasks)
    split = _split(rows, kept, found, h, stratify)
    return Scan(features, found, usable, kept, split, vocab, seen)


def _check_restored(block: Table, names: list[str], restored: Sequence[str] | None) -> None:
    if restored is not None and list(restored) != names:
        raise ManifestError(
            f"{block.source}: the features {names} differ from the checkpoint's {list(restored)}"
        )


def _where(files: Mapping[str, _File], file: int, line: int, suffix: bool) -> str:
    f = list(files.values())[file]
    return f"{f.unit} {line}" + (f" of {f.source.name}" if suffix else "")


def _duplicates(rows: _Rows, files: dict[str, _File], allow: bool) -> np.ndarray:
    """Whether each usable row is kept: a row whose features repeat an earlier usable row's
    (also in another file) is a problem of its file, naming the earlier row."""
    keys = rows.column("key", "S16")
    kept = np.ones(len(keys), dtype=bool)
    if allow or not len(keys):
        return kept
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    origin = first[inverse.reshape(-1)]
    dup = np.flatnonzero(origin != np.arange(len(keys)))
    kept[dup] = False
    lines, file_of = rows.column("line", np.int64), rows.column("file", np.uint8)
    names = list(files)
    several = len({f.source for f in files.values()}) > 1
    for i in dup.tolist():
        j = int(origin[i])
        reason = (
            f"the same features as {_where(files, int(file_of[j]), int(lines[j]), several)} "
            "(a duplicate; set allow_duplicates: true to keep it)"
        )
        file = files[names[int(file_of[i])]]
        file.problems.append(TableProblem(int(lines[i]), "", reason, file.unit))
    return kept


def _report(
    files: dict[str, _File], usable: dict[str, int], kept: np.ndarray, on_error: str
) -> None:
    start = 0
    for name, file in files.items():
        n_kept = int(kept[start : start + usable[name]].sum())
        start += usable[name]
        report_problems(file.problems, on_error, file.source, n_kept)  # type: ignore[arg-type]


def _labels(
    rows: _Rows, kept: np.ndarray, files: dict[str, _File], tasks: Sequence[TaskDecl]
) -> tuple[dict[str, list[str]], dict[str, LabelPlaces]]:
    """The labels of the kept rows per classification task (in order of appearance), and where
    each is (its count and first places), as ``check_labels`` reports them."""
    lines, file_of = rows.column("line", np.int64)[kept], rows.column("file", np.uint8)[kept]
    several = len({f.source for f in files.values()}) > 1
    plain = not several and all(f.unit == "line" for f in files.values())
    seen, places = {}, {}
    for task in rows.classes:
        codes = rows.column(f"c:{task}", np.int32)[kept]
        names = list(rows.names[task])
        counts = np.bincount(codes[codes >= 0], minlength=len(names))
        order = np.argsort(codes, kind="stable")
        starts = np.searchsorted(codes[order], np.arange(len(names)))
        p = LabelPlaces()
        for c, label in enumerate(names):
            if counts[c] == 0:
                continue
            first = order[starts[c] : starts[c] + min(8, int(counts[c]))].tolist()
            p.count[label] = int(counts[c])
            p.first[label] = [
                int(lines[i]) if plain else _where(files, int(file_of[i]), int(lines[i]), several)
                for i in first
            ]
        seen[task] = [n for c, n in enumerate(names) if counts[c] > 0]
        places[task] = p
    return seen, places


def _split(
    rows: _Rows, kept: np.ndarray, files: dict[str, _File], h: Any, stratify: str | None
) -> np.ndarray:
    """The split code of each kept row: its file's, its split column's, or stratified."""
    if "all" not in files:
        names = list(files)
        file_of = rows.column("file", np.uint8)[kept]
        return np.asarray([SPLITS.index(n) for n in names], dtype=np.uint8)[file_of]
    source = files["all"].source
    if h.split_column is not None:
        split = rows.column("split", np.uint8)[kept]
    else:
        strata = np.zeros(int(kept.sum()), dtype=np.int64)
        n_strata = 1
        if stratify is not None:
            codes = rows.column(f"c:{stratify}", np.int32)[kept]
            labels = [*rows.names[stratify], "<missing>"]
            rank = np.argsort(np.argsort(np.asarray(labels, dtype=object), kind="stable"))
            strata, n_strata = rank[np.where(codes >= 0, codes, len(labels) - 1)], len(labels)
        split = stratified_codes(strata, n_strata, h.val_fraction, h.test_fraction, h.seed)
    counts = np.bincount(split, minlength=3)
    for code, name in enumerate(SPLIT_NAMES):
        if counts[code] == 0:
            raise ManifestError(
                f"{source}: the {name} split has no rows ({len(split)} usable "
                f"row(s); val_fraction {h.val_fraction}, test_fraction {h.test_fraction}"
                f"{', split_column ' + repr(h.split_column) if h.split_column else ''})"
            )
    return split
