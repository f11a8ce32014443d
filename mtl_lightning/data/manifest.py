"""Read a corpus manifest (CSV) and report every bad row at once."""

from __future__ import annotations

import csv
import io
import logging
import os
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mtl_lightning.data.encodings import decode_text

__all__ = [
    "ManifestError",
    "ManifestRow",
    "RowProblem",
    "check_on_error",
    "read_manifest",
    "report_problems",
]

log = logging.getLogger(__name__)
OnError = Literal["raise", "skip"]
SPLITS = ("train", "val", "test")


def check_on_error(on_error: str) -> None:
    """A ``ValueError`` unless ``on_error`` is an :data:`OnError` (``raise`` or ``skip``)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


class ManifestError(ValueError):
    """Rows of a manifest that cannot be used; the message lists all of them."""


@dataclass(frozen=True)
class RowProblem:
    """One bad row: its line in the CSV (the header is line 1), its path and why."""

    line: int
    path: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.path or '<no path>'}: {self.reason}"


@dataclass(frozen=True)
class ManifestRow:
    """One usable row: the file, its labels (``None`` = missing) and its split (or ``None``)."""

    line: int
    path: str
    file: Path
    labels: dict[str, str | None]
    split: str | None
    group: str | None


def read_manifest(
    manifest: str | Path,
    audio_root: str | Path | None,
    path_column: str,
    label_columns: Sequence[str],
    partial: Sequence[str] = (),
    split_column: str | None = None,
    group_column: str | None = None,
    optional: Sequence[str] = (),
    conditions: Mapping[str, Mapping[str, Collection[str]]] | None = None,
    encoding: str | None = None,
    allow_duplicates: bool = True,
) -> tuple[list[ManifestRow], list[RowProblem]]:
    """Parse the CSV: the good rows and one :class:`RowProblem` per bad row.

    A row is bad when its file does not exist, a label of a task not in ``partial`` is empty,
    its split is not one of ``train``, ``val``, ``test``, or (``allow_duplicates=False``) its
    path repeats an earlier row's. Columns that are not named are
    ignored; a named column missing from the header is an immediate :class:`ManifestError`,
    unless it is ``optional``: an optional column may be absent (every cell counts as empty)
    and its empty cells are ``None``, not problems (``predict`` on unlabelled recordings).
    The file is decoded by :func:`~mtl_lightning.data.encodings.decode_text` (UTF-8, UTF-16
    with its BOM, or ``encoding``); lines are counted as in the file (the header is line 1).

    ``conditions`` (``{task: {other_task: [label names]}}``, both tasks in ``label_columns``)
    declares conditional tasks: where ``other_task``'s cell is not one of the names (empty
    included), the task's label is ``None`` whatever its cell holds (an empty cell or a
    placeholder such as ``n/a`` is not a problem, and not a class); where it is, the label is
    required as for any other task (unless the task is in ``partial``).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.wav").write_bytes(b"")
        >>> _ = (d / "m.csv").write_text("path,emotion\\na.wav,sad\\nb.wav,\\n")
        >>> rows, problems = read_manifest(d / "m.csv", None, "path", ["emotion"])
        >>> [r.labels for r in rows], [str(p) for p in problems]
        ([{'emotion': 'sad'}], ['line 3: b.wav: file not found; no emotion label'])
        >>> _ = (d / "s.csv").write_text("path,seed,quality\\na.wav,yes,good\\na.wav,no,n/a\\n")
        >>> rows, _ = read_manifest(d / "s.csv", None, "path", ["seed", "quality"],
        ...                         conditions={"quality": {"seed": ["yes"]}})
        >>> [r.labels for r in rows]
        [{'seed': 'yes', 'quality': 'good'}, {'seed': 'no', 'quality': None}]
        >>> [str(p) for p in read_manifest(d / "s.csv", None, "path", ["seed"],
        ...                                allow_duplicates=False)[1]]
        ['line 3: a.wav: the same file as line 2 (a duplicate row)']
    """
    manifest = Path(manifest)
    root = Path(audio_root) if audio_root is not None else manifest.parent
    when = _conditions(conditions, label_columns)
    reader = csv.reader(io.StringIO(decode_text(manifest, encoding), newline=""))
    header = [h.strip() for h in next(reader, [])]
    needed = [path_column, *label_columns, split_column, group_column]
    absent = [
        c for c in dict.fromkeys(needed) if c is not None and c not in header and c not in optional
    ]
    if absent:
        raise ManifestError(f"{manifest}: no column(s) {absent}; the header is {header}")
    columns = _Columns(path_column, list(label_columns), partial, split_column, group_column)
    rows: list[ManifestRow] = []
    problems: list[RowProblem] = []
    first: dict[str, int] = {}
    for line, record in _records(reader, manifest):
        row, reasons = _parse_row(
            dict(zip(header, record, strict=False)), line, root, columns, optional, when
        )
        key = os.path.normpath(row.path) if row.path else ""
        if not allow_duplicates and key:
            if key in first:
                reasons.append(f"the same file as line {first[key]} (a duplicate row)")
            else:
                first[key] = line
        if reasons:
            problems.append(RowProblem(line, row.path, "; ".join(reasons)))
        else:
            rows.append(row)
    return rows, problems


@dataclass(frozen=True)
class _Columns:
    path: str
    labels: list[str]
    partial: Sequence[str]
    split: str | None
    group: str | None


def _conditions(
    conditions: Mapping[str, Mapping[str, Collection[str]]] | None, label_columns: Sequence[str]
) -> dict[str, tuple[str, Collection[str]]]:
    when = {task: next(iter(cond.items())) for task, cond in (conditions or {}).items()}
    stray = sorted(
        {t for t in when if t not in label_columns}
        | {o for o, _ in when.values() if o not in label_columns}
    )
    if stray:
        raise ValueError(f"conditions name column(s) {stray} that are not label columns")
    return when


def _records(reader: Iterator[list[str]], manifest: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, cells)`` of every non-blank record; ``line`` is where the record starts."""
    start = 2
    try:
        for record in reader:
            line, start = start, reader.line_num + 1  # type: ignore[attr-defined]
            if record:
                yield line, record
    except csv.Error as error:
        raise ManifestError(f"{manifest}: line {start}: cannot parse the row: {error}") from None


def _parse_row(
    record: Mapping[str, str],
    line: int,
    root: Path,
    columns: _Columns,
    optional: Sequence[str],
    when: Mapping[str, tuple[str, Collection[str]]],
) -> tuple[ManifestRow, list[str]]:
    """One row and the reasons it is bad (none: a usable row)."""
    path = (record.get(columns.path) or "").strip()
    reasons = []
    file = root / path
    if not path:
        reasons.append("empty path")
    elif not file.is_file():
        reasons.append("file not found")
    labels: dict[str, str | None] = {}
    cells = {c: (record.get(c) or "").strip() for c in columns.labels}
    for column in columns.labels:
        value = cells[column]
        if column in when and cells[when[column][0]] not in when[column][1]:
            labels[column] = None  # the condition fails: not scored, whatever the cell
            continue
        if not value and column not in columns.partial and column not in optional:
            other = f" ({when[column][0]} is {cells[when[column][0]]!r})" if column in when else ""
            reasons.append(f"no {column} label{other}")
        labels[column] = value or None
    split = (record.get(columns.split) or "").strip() if columns.split else None
    if columns.split and split not in SPLITS:
        if split or columns.split not in optional:
            reasons.append(f"unknown split {split!r} (expected one of {list(SPLITS)})")
        split = None
    group = (record.get(columns.group) or "").strip() if columns.group else None
    if columns.group and not group:
        if columns.group not in optional:
            reasons.append(f"no {columns.group} (needed for splits/normalisation)")
        group = None
    return ManifestRow(line, path, file, labels, split, group), reasons


def report_problems(
    problems: Sequence[RowProblem], on_error: OnError, source: str | Path, kept: int
) -> None:
    """Raise one :class:`ManifestError` listing every problem, or warn with their count (skip).

    Example:
        >>> report_problems([RowProblem(3, "a.wav", "empty audio (0 samples)")], "raise", "m.csv", 9)
        Traceback (most recent call last):
        ...
        mtl_lightning.data.manifest.ManifestError: m.csv: 1 bad row(s) (set on_error: skip to leave them out):
          line 3: a.wav: empty audio (0 samples)
    """
    if not problems:
        return
    listing = "\n".join(f"  {p}" for p in sorted(problems, key=lambda p: p.line))
    if on_error == "raise":
        raise ManifestError(
            f"{source}: {len(problems)} bad row(s) (set on_error: skip to leave them out):\n"
            f"{listing}"
        )
    message = f"{source}: skipped {len(problems)} bad row(s), kept {kept}:\n{listing}"
    log.warning(message)
    warnings.warn(message, stacklevel=2)
