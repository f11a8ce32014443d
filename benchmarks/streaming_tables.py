"""Streaming tables (LitData shards) against the in-memory tabular datamodule.

Measures, in one run (ratios within the run), on CSV tables like the five-task user's (20
features, five label columns: :func:`~mtl_lightning.data.write_example_table`), 1x and 10x rows:

* **peak RSS reading**: for each of :class:`~mtl_lightning.data.TabularDataModule` and
  :class:`~mtl_lightning.data.StreamingTabularDataModule` (shards of 4 MB chunks written
  beforehand) at each
  size, a fresh process imports everything, runs ``setup("fit")`` and one training and one
  validation epoch (batch 64); the data part is its peak RSS less its RSS after the imports
  (``VmHWM``, reset after the imports). Target: streaming grows < 10% from 1x to 10x, in
  memory ~10x.
* **peak RSS writing**: the same for the streaming ``prepare_data`` into empty shards (the two
  passes, with their few bytes per row).
* **training step time**: the dense five-task model (``DenseTrunk`` of
  ``configs/tabular_five_tasks.yaml``) trained step by step on batches of the two loaders
  alternately, one torch thread. Target: streaming within 10% of in memory.
* **reading speed**: rows per second of the streaming ``prepare_data`` (both passes and the
  shards) against the in-memory ``setup("fit")`` (one read) on the 1x table, alternating.

Run: ``python -m benchmarks --only streaming_tables`` (with the machine line and the table), or
``python -m benchmarks.streaming_tables [--tiny]`` (the rows as JSON lines).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._interleave import timed_steps
from benchmarks.streaming import ROOT, _ratio, _reset_peak, _rss_mib, step_rows

warnings.filterwarnings("ignore")

NAME = "streaming_tables"
KINDS = ("in-memory", "streaming")
TASKS = [{"name": f"y{k}"} for k in range(1, 6)]
FULL_ROWS, TINY_ROWS = 20_000, 400
#: LitData chunk size: smaller than the 10x table's splits (~28 MB of training rows), so that
#: what a reader maps and a writer buffers (a few chunks per split) is bounded below the table
CHUNK_BYTES = "4MB"
Row = dict[str, Any]


def make_datamodule(kind: str, path: str, store: str) -> Any:
    from mtl_lightning.data import StreamingTabularDataModule, TabularDataModule

    if kind == "in-memory":
        return TabularDataModule(TASKS, path=path, features="x", batch_size=64)
    return StreamingTabularDataModule(
        TASKS, path=path, features="x", batch_size=64, shard_dir=store, chunk_bytes=CHUNK_BYTES
    )


def child(kind: str, path: str, store: str) -> dict[str, Any]:
    """In a fresh process: RSS after the imports, then the peak of the data part (``write``:
    the streaming ``prepare_data``; otherwise setup and one training and validation epoch)."""
    import lightning  # noqa: F401  (every import first, the same for every kind)
    import litdata  # noqa: F401
    import torch

    import mtl_lightning.data  # noqa: F401

    torch.set_num_threads(1)
    after_imports, imports_peak = _rss_mib()
    reset = _reset_peak()
    start = time.perf_counter()
    dm = make_datamodule("streaming" if kind == "write" else kind, path, store)
    batches = 0
    if kind == "write":
        dm.prepare_data()
    else:
        dm.setup("fit")
        batches = sum(1 for loader in (dm.train_dataloader(), dm.val_dataloader()) for _ in loader)
    data_peak = _rss_mib()[1]
    return {
        "after_imports": after_imports,
        "data_peak": data_peak,
        "peak": max(data_peak, imports_peak),
        "reset": reset,
        "seconds": time.perf_counter() - start,
        "batches": batches,
    }


def _spawn(kind: str, path: Path, store: Path) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks.streaming_tables", "--child", kind, str(path)]
    proc = subprocess.run(args + [str(store)], cwd=ROOT, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} child for {path.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def measure_rss(root: Path, n: int, in_process: bool) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(kind, scale): report}`` for reading in memory, reading streamed, and writing."""
    from mtl_lightning.data import write_example_table

    tables = {s: write_example_table(root / f"t{s}x.csv", n=s * n) for s in (1, 10)}
    for s, table in tables.items():  # the reading processes only read the shards
        make_datamodule("streaming", str(table), str(root / f"shards-{s}x")).prepare_data()
    stores = {(k, s): root / (f"new-{s}x" if k == "write" else f"shards-{s}x")
              for k in ("in-memory", "streaming", "write") for s in (1, 10)}  # fmt: skip
    jobs = list(stores)
    if in_process:
        return {j: child(j[0], str(tables[j[1]]), str(stores[j])) for j in jobs}
    with ThreadPoolExecutor(2) as pool:  # two at a time on 2 cores: RSS is per process
        found = pool.map(lambda j: _spawn(j[0], tables[j[1]], stores[j]), jobs)
        return dict(zip(jobs, found, strict=True))


def _row(setting: str, value: float, unit: str, ratio: float | None, note: str) -> Row:
    return {"benchmark": NAME, "setting": setting, "value": round(value, 3), "unit": unit,
            "ratio": ratio, "note": note}  # fmt: skip


def rss_rows(reports: dict[tuple[str, int], dict[str, Any]], n: int) -> list[Row]:
    """Peak RSS and its data part (peak - after imports) of each (kind, scale): 10x against the
    same kind at 1x, 1x against in memory."""
    rows = []
    for part in ("peak RSS", "data RSS (peak - after imports)"):
        value = {
            k: r["data_peak"] - r["after_imports"] if part.startswith("data") else r["peak"]
            for k, r in reports.items()
        }
        for kind, what in (("in-memory", "read"), ("streaming", "read"), ("write", "write")):
            for scale in (1, 10):
                r = reports[kind, scale]
                ref, against = (value[kind, 1], f"{kind} 1x") if scale == 10 else (
                    value["in-memory", 1], "in-memory 1x")  # fmt: skip
                note = (f"ratio vs {against}; {scale * n} rows; {r['batches']} batches in "
                        f"{r['seconds']:.1f} s; after imports {r['after_imports']:.0f} MiB")  # fmt: skip
                if scale == 10 and (kind == "in-memory") == part.startswith("data"):
                    note += "; target ~10" if kind == "in-memory" else "; target < 1.10"
                label = "streaming" if kind == "write" else kind
                setting = f"{label} {scale}x {what}: {part}"
                ratio = _ratio(value[kind, scale], ref)
                rows.append(_row(setting, value[kind, scale], "MiB", ratio, note))
    return rows


def reading_rows(table: Path, root: Path, trials: int) -> list[Row]:
    """Rows per second: the in-memory setup against the streaming prepare_data (empty store)."""
    seconds: dict[str, list[float]] = {k: [] for k in KINDS}
    n = sum(1 for _ in table.open()) - 1
    for trial in range(trials):
        for kind in KINDS if trial % 2 == 0 else KINDS[::-1]:
            dm = make_datamodule(kind, str(table), str(root / f"speed-{trial}"))
            start = time.perf_counter()
            dm.setup("fit") if kind == "in-memory" else dm.prepare_data()
            seconds[kind].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    return [
        _row(
            f"read the table: {kind}"
            + (" (two passes + shards)" if kind == "streaming" else " (setup)"),
            n / median[kind],
            "rows/s",
            _ratio(n / median[kind], n / median[KINDS[0]]),
            f"{n} rows, median of {trials} trials, alternating",
        )  # fmt: skip
        for kind in KINDS
    ]


def run(tiny: bool = False) -> list[Row]:
    """Rows for ``python -m benchmarks``."""
    from mtl_lightning import MultiTaskModule
    from mtl_lightning.nn import DenseTrunk

    n = TINY_ROWS if tiny else FULL_ROWS
    root = Path(tempfile.mkdtemp(prefix="mtl-table-bench-"))
    try:
        reports = measure_rss(root, n, in_process=tiny)
        table = root / "t1x.csv"
        dms = {k: make_datamodule(k, str(table), str(root / "shards-1x")) for k in KINDS}

        def model(tasks: Any) -> Any:
            trunk = DenseTrunk(20, widths=[240, 60, 20, 12], dropout=0.1)
            return MultiTaskModule(tasks, trunk=trunk, head_hidden=16)

        times = timed_steps(dms, model, 3 if not tiny else 1, 200 if not tiny else 2)
        speed = reading_rows(table, root, 1 if tiny else 3)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    steps = [{**r, "benchmark": NAME} for r in step_rows(times, "1x, dense five-task")]
    return rss_rows(reports, n) + steps + speed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(*args.child)))
        return
    for row in run(tiny=args.tiny):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
