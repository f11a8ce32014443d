"""Read a table file a block of rows at a time, for files larger than memory.

The blocks are :class:`~mtl_lightning.data.table_files.Table` objects exactly as
:func:`~mtl_lightning.data.table_files.read_table` would return for those rows (the same
parsing, line numbers and problems), so every check of the in-memory path runs on them
unchanged. CSV/TSV is decoded as it is read (:func:`~mtl_lightning.data.encodings.open_text`),
Parquet read a record batch at a time, ``.npy`` memory-mapped. An ``.npz`` archive cannot be
read in pieces: save its arrays as ``.npy`` or Parquet to stream them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mtl_lightning.data.encodings import encoding_error, open_text
from mtl_lightning.data.manifest import ManifestError
from mtl_lightning.data.table_files import (
    Table,
    arrow_table,
    check_header,
    delimited_blocks,
    numpy_columns,
    table_kind,
)

__all__ = ["iter_table_blocks"]


def iter_table_blocks(
    path: str | Path,
    encoding: str | None = None,
    columns: Sequence[str] | None = None,
    block_rows: int = 65536,
) -> Iterator[Table]:
    """The rows of ``path`` as tables of at most ``block_rows`` rows, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ManifestError: An unknown suffix, an ``.npz`` file, an empty file, a bad header or
            unreadable data (as :func:`~mtl_lightning.data.table_files.read_table`).

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = f.write_text("x0,y\\n1,a\\n2,b\\n3\\n4,c\\n")
        >>> [(b.lines, [str(p) for p in b.problems]) for b in iter_table_blocks(f, block_rows=2)]
        [([2, 3], []), ([5], ['line 4: 1 cell(s), the header has 2 columns'])]
    """
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    path = Path(path)
    kind = table_kind(path)
    if kind == "parquet":
        yield from _parquet_blocks(path, block_rows)
    elif kind == "numpy":
        yield from _numpy_blocks(path, columns, block_rows)
    else:
        stream, codec = open_text(path, encoding)
        with stream:
            try:
                yield from delimited_blocks(path, stream, kind, block_rows)
            except UnicodeDecodeError:
                raise encoding_error(path, codec) from None


def _parquet_blocks(path: Path, block_rows: int) -> Iterator[Table]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f'reading {path} (Parquet) needs pyarrow: pip install "mtl_lightning[tabular]"'
        ) from None
    try:
        file = pq.ParquetFile(path)
        check_header(path, list(file.schema_arrow.names))
        start = 0
        for batch in file.iter_batches(batch_size=block_rows):
            yield arrow_table(path, batch, start)
            start += batch.num_rows
        if start == 0:
            yield arrow_table(path, file.schema_arrow.empty_table(), 0)
    except (pa.ArrowException, OSError) as error:
        raise ManifestError(f"{path}: not a readable Parquet file: {error}") from None


def _numpy_blocks(path: Path, columns: Sequence[str] | None, block_rows: int) -> Iterator[Table]:
    if path.suffix.lower() == ".npz":
        raise ManifestError(
            f"{path}: an .npz archive cannot be read in pieces; save its arrays as one .npy "
            "(a 2-D or structured array) or as Parquet to stream it, or use TabularDataModule"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ManifestError(f"{path}: cannot read the NumPy arrays: {error}") from None
    if array.ndim == 0 or array.ndim > 2:
        raise ManifestError(
            f"{path}: array '(.npy)' has shape {list(array.shape)}; expected a 2-D features "
            "array or a structured table"
        )
    n = len(array)
    for start in range(0, max(n, 1), block_rows):
        part = np.asarray(array[start : start + block_rows])
        data = numpy_columns(path, {"": part}, columns)
        yield Table(path, list(data), data, list(range(start + 1, start + len(part) + 1)), "row")
