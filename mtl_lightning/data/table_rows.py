"""From tables to checked rows for :class:`~mtl_lightning.data.tabular_files.TabularDataModule`:
features, labels and split per row, every bad row collected with its line, then reported."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl_lightning.data.label_checks import label_problems
from mtl_lightning.data.manifest import SPLITS, ManifestError, OnError, report_problems
from mtl_lightning.data.table_files import Table, feature_matrix
from mtl_lightning.data.table_tasks import Labels, TaskDecl, label_text, read_labels
from mtl_lightning.data.vocab import LabelVocab

__all__ = [
    "FeatureStats",
    "Part",
    "build_vocab",
    "check_labels",
    "mark_duplicates",
    "predict_part",
    "raise_label_problems",
    "read_part",
    "report_parts",
    "require_rows",
    "resolve_features",
    "vocab_of",
]

log = logging.getLogger(__name__)


@dataclass
class Part:
    """The rows of one file: features ``[rows, F]``, labels per task, split per row (or None)."""

    table: Table
    features: np.ndarray
    labels: dict[str, Labels]
    split: list[str] | None
    bad: dict[int, list[str]]

    def keep(self, rows: Sequence[int]) -> Part:
        """Only the rows ``rows`` (indices), with no bad rows left."""
        idx = np.asarray(rows, dtype=np.int64)
        labels = {
            t: [v[i] for i in rows] if isinstance(v, list) else v[idx]
            for t, v in self.labels.items()
        }
        split = None if self.split is None else [self.split[i] for i in rows]
        return Part(self.table.select(rows), self.features[idx], labels, split, {})


def require_rows(table: Table) -> None:
    """Raise :class:`ManifestError` for a file with a header and no rows at all."""
    if len(table) == 0 and not table.problems:
        raise ManifestError(f"{table.source}: only a header, no data rows")


def predict_part(
    table: Table, features: Sequence[str], tasks: Sequence[TaskDecl], on_error: OnError
) -> Part:
    """Every row of a file to predict on: the features (bad rows reported as in training);
    labels are not read (every target is missing), so label columns may be absent."""
    require_rows(table)
    table.require(features, "feature")
    x, bad = feature_matrix(table, features)
    n = len(table)
    labels: dict[str, Labels] = {
        t.name: [None] * n if t.is_classification else np.full((n, len(t.columns)), np.nan)
        for t in tasks
    }
    return report_parts({"predict": Part(table, x, labels, None, bad)}, on_error)["predict"]


def resolve_features(
    table: Table, features: Sequence[str] | str | None, reserved: Sequence[str]
) -> list[str]:
    """Feature column names: the list given, the columns starting with a prefix, or every
    column that is not ``reserved`` (task and split columns).

    Example:
        >>> t = Table(Path("t.csv"), ["x_a", "x_b", "y"], {}, [])
        >>> resolve_features(t, "x_", ["y"]), resolve_features(t, None, ["y"])
        (['x_a', 'x_b'], ['x_a', 'x_b'])
    """
    if isinstance(features, str):
        names = [c for c in table.columns if c.startswith(features) and c not in reserved]
        if not names:
            raise ManifestError(
                f"{table.source}: no column starts with the features prefix {features!r}; "
                f"the columns are {table.columns}"
            )
        return names
    if features is None:
        names = [c for c in table.columns if c not in reserved]
        if not names:
            raise ManifestError(
                f"{table.source}: no feature columns: every column {table.columns} is a task "
                "or split column"
            )
        return names
    names = list(features)
    clash = sorted(set(names) & set(reserved))
    if clash or not names:
        raise ManifestError(
            f"features {names} must be non-empty and not task/split columns {clash}"
        )
    table.require(names, "feature")
    return names


def read_part(
    table: Table,
    features: Sequence[str],
    tasks: Sequence[TaskDecl],
    known: Mapping[str, Sequence[str] | None],
    split_column: str | None,
) -> Part:
    """Features, labels and split of every row of ``table``, and why each bad row is bad."""
    table.require(features, "feature")
    table.require([c for t in tasks for c in t.columns], "task")
    if split_column is not None:
        table.require([split_column], "split")
    x, bad = feature_matrix(table, features)
    labels: dict[str, Labels] = {}
    pending = list(tasks)
    while pending:  # a conditional task after the task its condition reads
        ready = [t for t in pending if t.only_when is None or t.only_when[0] in labels]
        if not ready:
            raise ValueError(f"only_when conditions form a cycle: {[t.name for t in pending]}")
        for task in ready:
            active = None
            if task.only_when is not None:
                other, names = task.only_when
                active = np.array([v in names for v in labels[other]], dtype=bool)
            labels[task.name], more = read_labels(task, table, known.get(task.name), active)
            _merge(bad, more)
            pending.remove(task)
    split = None
    if split_column is not None:
        split = [label_text(c) or "" for c in table.data[split_column].tolist()]
        for i, s in enumerate(split):
            if s not in SPLITS:
                _merge(bad, {i: [f"{split_column} {s!r} is not one of {list(SPLITS)}"]})
    labels = {t.name: labels[t.name] for t in tasks}
    return Part(table, x, labels, split, bad)


def _merge(bad: dict[int, list[str]], more: Mapping[int, list[str]]) -> None:
    for i, reasons in more.items():
        bad.setdefault(i, []).extend(reasons)


def mark_duplicates(parts: Mapping[str, Part]) -> None:
    """Add a reason to every row whose features equal an earlier row's (also in another file).

    Example:
        >>> t = Table(Path("t.csv"), [], {}, [2, 3, 4])
        >>> p = Part(t, np.array([[1.0], [2.0], [1.0]]), {}, None, {})
        >>> mark_duplicates({"all": p}); p.bad
        {2: ['the same features as line 2 (a duplicate; set allow_duplicates: true to keep it)']}
    """
    seen: dict[bytes, str] = {}
    files = {p.table.source for p in parts.values()}
    for part in parts.values():
        table = part.table
        for i in range(len(table)):
            if i in part.bad:
                continue
            key = part.features[i].tobytes()
            where = table.where(i) + (f" of {table.source.name}" if len(files) > 1 else "")
            if key in seen:
                part.bad[i] = [
                    f"the same features as {seen[key]} (a duplicate; set allow_duplicates: true "
                    "to keep it)"
                ]
            else:
                seen[key] = where


def report_parts(parts: dict[str, Part], on_error: OnError) -> dict[str, Part]:
    """Raise :class:`ManifestError` listing each file's bad rows, or leave them out (skip)."""
    kept = {}
    for name, part in parts.items():
        table = part.table
        problems = list(table.problems)
        problems += [table.problem(i, "; ".join(r)) for i, r in sorted(part.bad.items())]
        good = [i for i in range(len(table)) if i not in part.bad]
        report_problems(problems, on_error, table.source, len(good))
        kept[name] = part.keep(good)
    return kept


def check_labels(
    parts: Mapping[str, Part], tasks: Sequence[TaskDecl], min_count: int, near_duplicates: bool
) -> None:
    """Raise :class:`ManifestError` for rare or near-duplicate class labels (per-task opt-out:
    ``check_labels: false``), over the rows of every file."""
    files = len(parts) > 1
    messages = []
    for task in tasks:
        if not task.is_classification or not task.check_labels:
            continue
        labels: list[str | None] = []
        where: list[int | str] = []
        for part in parts.values():
            labels += list(part.labels[task.name])
            table = part.table
            at: list[int | str] = list(table.lines)
            if files or table.unit != "line":
                suffix = f" of {table.source.name}" if files else ""
                at = [f"{table.where(i)}{suffix}" for i in range(len(table))]
            where += at
        messages += label_problems(task.name, labels, where, min_count, near_duplicates)
    raise_label_problems([p.table.source for p in parts.values()], messages)


def raise_label_problems(sources: Sequence[Path], messages: Sequence[str]) -> None:
    """Raise one :class:`ManifestError` listing ``messages`` (none: return)."""
    if messages:
        source = ", ".join(sorted({str(s) for s in sources}))
        listing = "\n".join(f"  {m}" for m in messages)
        raise ManifestError(
            f"{source}: suspicious labels (fix the cells; or set min_label_count / "
            f"near_duplicate_check, or check_labels: false in the task):\n{listing}"
        )


def source_of(parts: Mapping[str, Part]) -> Path:
    """The first file read (for messages)."""
    return next(iter(parts.values())).table.source


@dataclass
class FeatureStats:
    """Feature names and the training split's mean/std (``std`` 1 for constant columns).

    Example:
        >>> s = FeatureStats.fit(["a", "b"], np.array([[1.0, 5.0], [3.0, 5.0]]))
        >>> s.mean.tolist(), s.std.tolist()
        ([2.0, 5.0], [1.0, 1.0])
    """

    features: list[str]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: Sequence[str], x: np.ndarray, standardize: bool = True) -> FeatureStats:
        """Statistics of ``x`` ``[rows, F]``; ``standardize=False``: mean 0, std 1."""
        if not standardize:
            return cls(list(features), np.zeros(x.shape[1]), np.ones(x.shape[1]))
        std = x.std(axis=0)
        return cls(list(features), x.mean(axis=0), np.where(std > 0, std, 1.0))

    def to_json(self) -> str:
        """The statistics as JSON, for ``feature_stats.json`` in the run directory."""
        listed = {"mean": self.mean, "std": self.std}
        stats = {k: [round(float(v), 8) for v in a] for k, a in listed.items()}
        return json.dumps({"features": self.features, **stats}, indent=2) + "\n"

    def state_dict(self) -> dict[str, Any]:
        """``{"features", "mean", "std"}`` (tensors: safe for ``weights_only`` loads)."""
        return {
            "features": list(self.features),
            "mean": torch.from_numpy(self.mean),
            "std": torch.from_numpy(self.std),
        }


def build_vocab(parts: Mapping[str, Part], tasks: Sequence[TaskDecl]) -> LabelVocab:
    """Class names of the classification tasks: declared ``classes``, else those seen in any
    file (integers sorted as numbers)."""
    seen = {
        d.name: [v for p in parts.values() for v in p.labels[d.name]]
        for d in tasks
        if d.is_classification
    }
    return vocab_of(seen, tasks)


def vocab_of(seen: Mapping[str, Iterable[str | None]], tasks: Sequence[TaskDecl]) -> LabelVocab:
    """:func:`build_vocab` from the labels seen per classification task."""
    names = LabelVocab.build(seen).names
    names |= {d.name: list(d.classes) for d in tasks if d.classes is not None}
    for task, classes in names.items():
        numbers = all(n.lstrip("-").isdigit() for n in classes)
        if numbers and classes != [str(k) for k in range(len(classes))]:
            log.info(
                "task %s: integer labels %s are class indices 0..%d (label_vocab.json); "
                "declare size: or classes: to fix the mapping",
                task,
                classes[:10],
                len(classes) - 1,
            )
    return LabelVocab(names)
