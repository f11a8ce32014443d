"""The rows a streamed table predicts on, in one pass: features checked a block at a time as
:func:`~mtl_lightning.data.table_rows.predict_part` checks them, written to shards with the
line of each row (for ``LabelledPredictionWriter``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtl_lightning.data.manifest import ManifestError, report_problems
from mtl_lightning.data.table_blocks import iter_table_blocks
from mtl_lightning.data.table_files import TableProblem, feature_matrix
from mtl_lightning.data.table_scan import READ_ROWS
from mtl_lightning.data.table_shards import SplitWriter
from mtl_lightning.data.table_tasks import TaskDecl

__all__ = ["write_predict"]


def write_predict(
    path: Path,
    h: Any,
    features: Sequence[str],
    tasks: Sequence[TaskDecl],
    root: Path,
    block_rows: int,
    chunk_bytes: str | int,
) -> dict[str, Any]:
    """Every good row of ``path`` (features only; label columns may be absent) into
    ``root/predict``, its line into ``root/lines.npy``; bad rows reported (``h.on_error``)."""
    writer = SplitWriter(root / "predict", block_rows, chunk_bytes)
    counts: list[TableProblem] = []
    bad_rows: list[TableProblem] = []
    lines: list[np.ndarray] = []
    rows, unit = 0, "line"
    for block in iter_table_blocks(path, h.encoding, h.columns, READ_ROWS):
        block.require(features, "feature")
        x, bad = feature_matrix(block, features)
        counts += block.problems
        bad_rows += [block.problem(i, "; ".join(r)) for i, r in bad.items()]
        good = np.asarray([i for i in range(len(block)) if i not in bad], dtype=np.int64)
        if len(good):
            writer.add({"x": x[good]})
            lines.append(np.asarray(block.lines, dtype=np.int64)[good])
        rows, unit = rows + len(block), block.unit
    if rows == 0 and not counts:
        raise ManifestError(f"{path}: only a header, no data rows")
    kept = sum(len(v) for v in lines)
    report_problems(counts + bad_rows, h.on_error, path, kept)
    if kept == 0:
        raise ManifestError(f"{path}: no row to predict on (every row is bad)")
    info = writer.done()
    np.save(root / "lines.npy", np.concatenate(lines))
    return {"version": 1, "rows": info["rows"], "unit": unit}
