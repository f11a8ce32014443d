"""Read a table file (CSV/TSV, Parquet, NumPy ``.npz``/``.npy``) into named columns.

CSV and TSV are read with the standard ``csv`` module, so every row keeps its exact line number
(the header is line 1; a quoted cell with line breaks counts from its first line) for the
bad-row report; the encodings are those of :func:`~mtl_lightning.data.encodings.decode_text`.
Parquet is read with ``pyarrow.parquet`` (``pip install "mtl_lightning[tabular]"``), NumPy files
with ``numpy.load`` (no pickles): an ``.npz`` holds one 2-D numeric array (its columns are named
``x0, x1, ...`` unless ``columns`` names them) and 1-D arrays named by their keys, or structured
arrays whose fields are columns; an ``.npy`` holds one 2-D numeric array or a structured array.
Parquet and NumPy rows are numbered from 1 (``row 1`` is the first row).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtl_lightning.data.encodings import decode_text
from mtl_lightning.data.manifest import ManifestError, RowProblem

__all__ = ["SUFFIXES", "Table", "TableProblem", "feature_matrix", "read_table"]
__all__ += ["arrow_table", "check_header", "delimited_blocks", "numpy_columns", "table_kind"]

#: file suffixes read, and how
SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".parquet": "parquet", ".pq": "parquet"}
SUFFIXES |= {".npz": "numpy", ".npy": "numpy"}


@dataclass(frozen=True)
class TableProblem(RowProblem):
    """A bad row of a table: ``line 5: ...`` (CSV/TSV) or ``row 5: ...`` (Parquet, NumPy)."""

    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.reason}"


@dataclass
class Table:
    """Columns of one file: numeric arrays, or object arrays of cells (``None`` = empty cell).

    ``lines[i]`` is where row ``i`` is in the file (``unit`` ``"line"`` or ``"row"``).
    """

    source: Path
    columns: list[str]
    data: dict[str, np.ndarray]
    lines: list[int]
    unit: str = "line"
    problems: list[TableProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, row: int) -> str:
        """``"line 5"`` / ``"row 5"`` of row index ``row``."""
        return f"{self.unit} {self.lines[row]}"

    def problem(self, row: int, reason: str) -> TableProblem:
        """A :class:`TableProblem` for row index ``row``."""
        return TableProblem(self.lines[row], "", reason, self.unit)

    def require(self, names: Sequence[str], what: str) -> None:
        """Raise :class:`ManifestError` naming the missing columns and those that exist."""
        absent = [n for n in dict.fromkeys(names) if n not in self.data]
        if absent:
            raise ManifestError(
                f"{self.source}: no {what} column(s) {absent}; the columns are {self.columns}"
            )

    def select(self, keep: Sequence[int]) -> Table:
        """The rows ``keep`` (indices), in that order; problems are kept as they are."""
        idx = np.asarray(keep, dtype=np.int64)
        data = {k: v[idx] for k, v in self.data.items()}
        lines = [self.lines[i] for i in keep]
        return Table(self.source, self.columns, data, lines, self.unit, list(self.problems))


def read_table(
    path: str | Path, encoding: str | None = None, columns: Sequence[str] | None = None
) -> Table:
    """Read ``path`` by its suffix; rows with the wrong number of cells go to ``problems``.

    Args:
        path: A ``.csv``, ``.tsv`` (or ``.tab``), ``.parquet`` (``.pq``), ``.npz`` or ``.npy`` file.
        encoding: Text encoding of a CSV/TSV (see :mod:`~mtl_lightning.data.encodings`).
        columns: Names of the columns of a NumPy file's 2-D array (default ``x0, x1, ...``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ManifestError: An unknown suffix, an empty file, a bad header or unreadable arrays.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = f.write_bytes(b"\\xef\\xbb\\xbfx0,y\\r\\n1.5,a\\r\\n2,\\r\\n3\\r\\n")
        >>> t = read_table(f); t.columns, t.data["y"].tolist(), t.lines, [str(p) for p in t.problems]
        (['x0', 'y'], ['a', None], [2, 3], ['line 4: 1 cell(s), the header has 2 columns'])
    """
    path = Path(path)
    kind = table_kind(path)
    if kind == "parquet":
        return _read_parquet(path)
    if kind == "numpy":
        return _read_numpy(path, columns)
    return _read_delimited(path, kind, encoding)


def table_kind(path: Path) -> str:
    """How ``path`` is read (its :data:`SUFFIXES` entry); raise for an unknown suffix or a
    missing file."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(
            f"{path}: unknown table format {path.suffix!r}; use one of {sorted(SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return kind


def check_header(path: Path, header: list[str]) -> None:
    empty = [i + 1 for i, h in enumerate(header) if not h]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if empty or repeated:
        raise ManifestError(
            f"{path}: bad header {header}: "
            + "; ".join(
                ([f"column(s) {empty} have no name"] if empty else [])
                + ([f"{repeated} appear more than once"] if repeated else [])
            )
        )


def _read_delimited(path: Path, delimiter: str, encoding: str | None) -> Table:
    text = io.StringIO(decode_text(path, encoding), newline="")
    return next(delimited_blocks(path, text, delimiter, None))


def delimited_blocks(
    path: Path, lines: Iterable[str], delimiter: str, block_rows: int | None
) -> Iterator[Table]:
    """The rows of CSV/TSV text ``lines`` as tables of ``block_rows`` rows (``None``: one table);
    the last may be shorter, and a file with only a header yields one empty table. A row with
    the wrong number of cells is a problem of the block it falls in."""
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path}: the file is empty (no header, no rows)") from None
    check_header(path, header)
    cells: list[list[str | None]] = []
    lines_at: list[int] = []
    problems: list[TableProblem] = []
    yielded = False
    start = reader.line_num + 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record:  # a blank line
                continue
            if len(record) != len(header):
                reason = f"{len(record)} cell(s), the header has {len(header)} columns"
                problems.append(TableProblem(line, "", reason))
                continue
            cells.append([c.strip() or None for c in record])
            lines_at.append(line)
            if len(cells) == block_rows:
                yield _cells_table(path, header, cells, lines_at, problems)
                cells, lines_at, problems, yielded = [], [], [], True
    except csv.Error as error:
        raise ManifestError(f"{path}: line {start}: cannot parse the row: {error}") from None
    if cells or problems or not yielded:
        yield _cells_table(path, header, cells, lines_at, problems)


def _cells_table(
    path: Path,
    header: list[str],
    cells: list[list[str | None]],
    lines: list[int],
    problems: list[TableProblem],
) -> Table:
    data = {h: np.array([row[j] for row in cells], dtype=object) for j, h in enumerate(header)}
    return Table(path, header, data, lines, "line", problems)


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f'reading {path} (Parquet) needs pyarrow: pip install "mtl_lightning[tabular]"'
        ) from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise ManifestError(f"{path}: not a readable Parquet file: {error}") from None
    check_header(path, list(table.column_names))
    return arrow_table(path, table, 0)


def arrow_table(path: Path, table: Any, start: int) -> Table:
    """A pyarrow ``Table`` or ``RecordBatch`` whose first row is row ``start + 1`` of ``path``:
    numeric and boolean columns without nulls as arrays, the others as cells."""
    import pyarrow as pa

    data: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name)
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        if (numeric or pa.types.is_boolean(column.type)) and column.null_count == 0:
            data[name] = column.to_numpy()
        else:
            data[name] = _cells(column.to_pylist())
    lines = list(range(start + 1, start + table.num_rows + 1))
    return Table(path, list(table.column_names), data, lines, "row")


def _cells(values: Sequence[Any]) -> np.ndarray:
    """An object array of cells; empty strings and ``None`` become ``None``."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        v = v.strip() if isinstance(v, str) else v
        out[i] = None if v is None or v == "" else v
    return out


def _read_numpy(path: Path, columns: Sequence[str] | None) -> Table:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = {"": loaded}
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except (ValueError, OSError, EOFError) as error:
        raise ManifestError(f"{path}: cannot read the NumPy arrays: {error}") from None
    data = numpy_columns(path, arrays, columns)
    if not data:
        raise ManifestError(f"{path}: the file holds no arrays")
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) > 1:
        raise ManifestError(f"{path}: the columns have different numbers of rows: {lengths}")
    n = next(iter(lengths.values()))
    return Table(path, list(data), data, list(range(1, n + 1)), "row")


def numpy_columns(
    path: Path, arrays: Mapping[str, np.ndarray], columns: Sequence[str] | None
) -> dict[str, np.ndarray]:
    data: dict[str, np.ndarray] = {}
    matrices = [k for k, a in arrays.items() if a.ndim == 2 and a.dtype.names is None]
    if len(matrices) > 1:
        raise ManifestError(
            f"{path}: {len(matrices)} 2-D arrays {matrices}; one (the features) is allowed, "
            "the others must be 1-D (one column each)"
        )
    for key, array in arrays.items():
        if array.dtype.names is not None and array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]  # a structured column vector
        if array.dtype.names is not None and array.ndim == 1:
            data |= {name: _column(array[name]) for name in array.dtype.names}
        elif array.ndim == 2 and array.dtype.names is None:
            names = (
                list(columns) if columns is not None else [f"x{j}" for j in range(array.shape[1])]
            )
            if len(names) != array.shape[1]:
                raise ManifestError(
                    f"{path}: columns names {len(names)} columns, the array {key or '(.npy)'!r} "
                    f"has {array.shape[1]}"
                )
            data |= {name: _column(array[:, j]) for j, name in enumerate(names)}
        elif array.ndim == 1 and key:
            data[key] = _column(array)
        else:
            raise ManifestError(
                f"{path}: array {key or '(.npy)'!r} has shape {list(array.shape)}; expected a 2-D "
                "features array, 1-D columns or a structured table"
            )
    return data


def _column(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "biuf":
        return np.ascontiguousarray(array)
    return _cells([v.item() if isinstance(v, np.generic) else v for v in array])


def feature_matrix(table: Table, names: Sequence[str]) -> tuple[np.ndarray, dict[int, list[str]]]:
    """The float64 matrix ``[rows, len(names)]`` and, per bad row index, why it is bad.

    A cell is bad when it is empty, not a number, or NaN/inf; the reason names the column and
    the value.

    Example:
        >>> t = Table(Path("t.csv"), ["a", "b"], {"a": np.array(["1", "x"], dtype=object),
        ...           "b": np.array([0.5, np.inf])}, [2, 3])
        >>> x, bad = feature_matrix(t, ["a", "b"]); bad
        {1: ["feature 'a': 'x' is not a number", "feature 'b': inf is not finite (NaN/inf)"]}
    """
    x = np.zeros((len(table), len(names)), dtype=np.float64)
    bad: dict[int, list[str]] = {}
    for j, name in enumerate(names):
        column = table.data[name]
        try:  # numbers, or cells that all read as numbers (none empty): at once
            if column.dtype.kind not in "biuf" and any(cell is None for cell in column):
                raise ValueError("an empty cell")
            x[:, j] = column.astype(np.float64)
            reasons = {i: _not_finite(x[i, j]) for i in np.flatnonzero(~np.isfinite(x[:, j]))}
        except (TypeError, ValueError):  # cell by cell, to say which ones do not
            reasons = {i: _number(cell, x, i, j) for i, cell in enumerate(column)}
        for i, reason in reasons.items():
            if reason:
                bad.setdefault(int(i), []).append(f"feature {name!r}: {reason}")
    return x, dict(sorted(bad.items()))


def _not_finite(value: float) -> str:
    return f"{value} is not finite (NaN/inf)"


def _number(cell: Any, out: np.ndarray, i: int, j: int) -> str:
    """Write ``cell`` as a float into ``out[i, j]``; the reason it cannot be, or ``""``."""
    if cell is None:
        out[i, j] = np.nan
        return "empty cell"
    try:
        value = float(cell)
    except (TypeError, ValueError):
        out[i, j] = np.nan
        return f"{cell!r} is not a number"
    out[i, j] = value
    return "" if np.isfinite(value) else _not_finite(value)
