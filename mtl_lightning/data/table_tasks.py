"""Task declarations of a :class:`~mtl_lightning.data.tabular_files.TabularDataModule` and the
per-row labels they read from a :class:`~mtl_lightning.data.table_files.Table`.

A declaration is a plain dict (YAML-friendly)::

    {name: y1, kind: classification, column: y1, role: main, weight: 1.0,
     classes: [low, mid, high] | size: 3, only_when: {seed: ["yes"]}, check_labels: true}

``kind`` is ``classification`` (one column of string or integer labels), ``regression`` (one
``column`` or several ``columns``: one output each) or ``multilabel`` (``columns`` of 0/1 cells).
``column`` defaults to the name. ``classes`` fixes the class names and their order, ``size``
declares integer labels ``0 .. size-1``; a label outside them is a bad row. Every other key is
passed to :class:`~mtl_lightning.tasks.TaskSpec` (``adversary``, ``class_weights``, ...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtl_lightning.data.table_files import Table
from mtl_lightning.tasks import TaskSpec

__all__ = ["TaskDecl", "parse_tasks", "read_labels"]

_OWN_KEYS = ("name", "kind", "column", "columns", "role", "weight", "classes", "size")
_OWN_KEYS += ("only_when", "conditions", "check_labels")
_KINDS = ("classification", "regression", "multilabel")
# a cell's labels: a class name (classification), or floats with NaN = missing
Labels = list[str | None] | np.ndarray


@dataclass(frozen=True)
class TaskDecl:
    """One checked task declaration (see the module doc)."""

    name: str
    kind: str
    columns: list[str]
    role: str = "main"
    weight: float = 1.0
    classes: list[str] | None = None  # declared class names (``size``: "0" .. "size-1")
    only_when: tuple[str, list[str]] | None = None  # (other task, its label names)
    check_labels: bool = True
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    def spec(self, size: int, only_when: dict[str, list[int]] | None) -> TaskSpec:
        """The :class:`TaskSpec` with ``size`` outputs (classes, labels or regression columns)."""
        return TaskSpec(
            self.name,
            size,
            kind=self.kind,  # type: ignore[arg-type]
            role=self.role,  # type: ignore[arg-type]
            weight=self.weight,
            only_when=only_when,
            **self.extra,
        )


def parse_tasks(declarations: Sequence[Mapping[str, Any]]) -> list[TaskDecl]:
    """Check the declarations; raise ``ValueError`` naming the declaration and key at fault.

    Example:
        >>> [(t.name, t.kind, t.columns) for t in parse_tasks([{"name": "y1"},
        ...     {"name": "pos", "kind": "regression", "columns": ["px", "py"]}])]
        [('y1', 'classification', ['y1']), ('pos', 'regression', ['px', 'py'])]
        >>> parse_tasks([{"name": "y1", "colour": "red"}])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: tasks[0] (y1): unknown key(s) ['colour']; the keys are [...]
    """
    if not declarations:
        raise ValueError("tasks: declare at least one task, e.g. [{name: y1, column: y1}]")
    spec_keys = {f.name for f in dataclasses.fields(TaskSpec)} - {"name", "size", "kind"}
    decls = [_parse_one(i, dict(d), spec_keys) for i, d in enumerate(declarations)]
    names = [d.name for d in decls]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"tasks: the names {repeated} are declared more than once")
    for d in decls:
        if d.only_when is not None:
            other = d.only_when[0]
            if (
                other == d.name
                or other not in names
                or not decls[names.index(other)].is_classification
            ):
                raise ValueError(
                    f"tasks ({d.name}): only_when names {other!r}, which is not another "
                    f"classification task; the tasks are {names}"
                )
    return decls


def _parse_one(i: int, d: dict[str, Any], spec_keys: set[str]) -> TaskDecl:
    name = d.get("name")
    where = f"tasks[{i}] ({name})"
    if not isinstance(name, str) or not name:
        raise ValueError(f"tasks[{i}]: every task needs a name, got {d}")
    unknown = sorted(set(d) - set(_OWN_KEYS) - spec_keys)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown}; the keys are {sorted(set(_OWN_KEYS) | spec_keys)}"
        )
    kind = d.get("kind", "classification")
    if kind not in _KINDS:
        raise ValueError(f"{where}: kind must be one of {list(_KINDS)}, got {kind!r}")
    if "column" in d and "columns" in d:
        raise ValueError(f"{where}: give column or columns, not both")
    columns = d.get("columns", [d.get("column", name)])
    if isinstance(columns, str) or not columns or not all(isinstance(c, str) for c in columns):
        raise ValueError(f"{where}: columns must be a non-empty list of column names: {columns!r}")
    if d.get("role", "main") not in ("main", "adversarial"):
        raise ValueError(f"{where}: role must be 'main' or 'adversarial', got {d['role']!r}")
    if kind == "classification" and len(columns) != 1:
        raise ValueError(f"{where}: a classification task reads one column, got {columns}")
    return TaskDecl(
        name,
        kind,
        list(columns),
        role=d.get("role", "main"),
        weight=float(d.get("weight", 1.0)),
        classes=_classes(where, kind, d.get("classes"), d.get("size")),
        only_when=_condition(where, d.get("only_when", d.get("conditions"))),
        check_labels=bool(d.get("check_labels", True)),
        extra={k: v for k, v in d.items() if k in spec_keys and k not in _OWN_KEYS},
    )


def _classes(where: str, kind: str, classes: Any, size: Any) -> list[str] | None:
    if classes is None and size is None:
        return None
    if kind != "classification":
        raise ValueError(f"{where}: classes/size are for classification tasks (kind is {kind})")
    if isinstance(classes, int) and size is None:
        classes, size = None, classes
    if classes is not None:
        if isinstance(classes, str) or len(set(map(str, classes))) != len(classes):
            raise ValueError(f"{where}: classes must be a list of distinct names: {classes!r}")
        return [str(c) for c in classes]
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"{where}: size must be an integer >= 2, got {size!r}")
    return [str(k) for k in range(size)]


def _condition(where: str, cond: Any) -> tuple[str, list[str]] | None:
    if cond is None:
        return None
    if not isinstance(cond, Mapping) or len(cond) != 1:
        raise ValueError(f"{where}: only_when must be {{task: [labels]}}, got {cond!r}")
    ((other, names),) = cond.items()
    if isinstance(names, (str, int)):
        names = [names]
    return str(other), [label_text(n) or "" for n in names]


def label_text(cell: Any) -> str | None:
    """A class label as text: ``None``/NaN/``""`` -> ``None``; a whole number written as a
    float (``2.0``, ``"2.0"``, ``"2.000000e+00"``) -> ``"2"``, so one class is not two.

    Example:
        >>> [label_text(c) for c in (None, float("nan"), 2.0, "2.0", 3, " a ", True, "1.5")]
        [None, None, '2', '2', '3', 'a', 'True', '1.5']
    """
    if isinstance(cell, np.generic):
        cell = cell.item()
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    text = str(cell).strip()
    if text and text[-1].isdigit() and not text.lstrip("+-").isdigit():
        try:
            value = float(text)
        except ValueError:
            return text
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
    return text or None


def read_labels(
    task: TaskDecl, table: Table, known: Sequence[str] | None, active: np.ndarray | None = None
) -> tuple[Labels, dict[int, list[str]]]:
    """The task's labels per row and, per bad row index, why it is bad.

    Classification: text labels (``None`` = missing); a label not in ``known`` (declared or
    restored classes, when given) is bad. Regression: floats ``[rows, columns]``, NaN = missing;
    a cell that is not a finite number is bad. Multilabel: 0./1. ``[rows, columns]``, an empty
    row is all-NaN; a cell other than 0/1/empty, or a row with some cells empty, is bad. Rows
    where ``active`` (the task's ``only_when`` condition) is False are missing, whatever their
    cells hold.

    Example:
        >>> from pathlib import Path
        >>> t = Table(Path("t.csv"), ["a", "b"], {"a": np.array(["1", None, "1"], dtype=object),
        ...           "b": np.array(["0", None, "2"], dtype=object)}, [2, 3, 4])
        >>> values, bad = read_labels(TaskDecl("m", "multilabel", ["a", "b"]), t, None)
        >>> values.tolist()[:2], bad
        ([[1.0, 0.0], [nan, nan]], {2: ["m column 'b': '2' is not 0, 1 or empty"]})
    """
    if task.is_classification:
        labels, bad = _class_labels(task, table, known, active)
        return labels, bad
    values = np.full((len(table), len(task.columns)), np.nan)
    bad = {}
    for j, column in enumerate(task.columns):
        for i, cell in enumerate(table.data[column].tolist()):
            if active is not None and not active[i]:
                continue
            reason = _target_cell(task, cell, values, i, j)
            if reason:
                bad.setdefault(i, []).append(f"{task.name} column {column!r}: {reason}")
    if task.kind == "multilabel":
        empty = np.isnan(values)
        for i in np.flatnonzero(empty.any(axis=1) & ~empty.all(axis=1)).tolist():
            if i not in bad:
                missing = [c for c, e in zip(task.columns, empty[i], strict=True) if e]
                bad[i] = [f"{task.name}: cells of {missing} are empty, the others are not"]
    return values, bad


def _target_cell(task: TaskDecl, cell: Any, out: np.ndarray, i: int, j: int) -> str:
    if isinstance(cell, str):
        cell = cell.strip() or None
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return ""
    try:
        value = float(cell)
    except (TypeError, ValueError):
        value = math.nan
    if task.kind == "multilabel" and value not in (0.0, 1.0):
        return f"{cell!r} is not 0, 1 or empty"
    if not math.isfinite(value):
        return f"{cell!r} is not a finite number"
    out[i, j] = value
    return ""


def _class_labels(
    task: TaskDecl, table: Table, known: Sequence[str] | None, active: np.ndarray | None
) -> tuple[list[str | None], dict[int, list[str]]]:
    (column,) = task.columns
    labels = [label_text(c) for c in table.data[column].tolist()]
    if active is not None:
        labels = [v if a else None for v, a in zip(labels, active.tolist(), strict=True)]
    bad: dict[int, list[str]] = {}
    if known is not None:
        index = set(known)
        listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        for i, v in enumerate(labels):
            if v is not None and v not in index:
                bad[i] = [f"{task.name} label {v!r} (column {column!r}) is not a class: [{listed}]"]
    return labels, bad
