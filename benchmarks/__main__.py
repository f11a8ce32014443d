"""``python -m benchmarks [--tiny] [--only NAME ...] [--json PATH]``: every benchmark, one table.

Each benchmark runs in a fresh child process, one after the other, so that its peak memory is
its own and no benchmark inherits another's warm caches or allocations.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import pkgutil
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

Rows = list[dict[str, Any]]


def module_names() -> list[str]:
    """The benchmark modules in this package (files not starting with ``_``), sorted.

    Example:
        >>> {"lightning_overhead", "affinity_overhead"} <= set(module_names())
        True
    """
    infos = pkgutil.iter_modules([str(Path(__file__).parent)])
    return sorted(i.name for i in infos if not i.name.startswith("_"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import lightning
    import torchmetrics

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": f"{usable} usable of {os.cpu_count()}",
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
    }
    with contextlib.suppress(OSError):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def _peak_rss_mib() -> float:
    """This process's peak resident memory. On Linux ``VmHWM``: ``ru_maxrss`` survives
    ``exec``, so a child would report its parent's peak (the runner's torch import) when that is
    higher than its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # KiB on Linux, B on macOS


def run_one(name: str, tiny: bool) -> tuple[Rows, str | None]:
    """Run one benchmark in this process: its rows (memory and time added), or an error."""
    try:
        fn = getattr(importlib.import_module(f"benchmarks.{name}"), "run", None)
    except Exception:  # e.g. a missing optional dependency: report it, run the others
        return [], traceback.format_exc()
    if fn is None:
        return [], None
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        result = fn(tiny=tiny)
    except Exception:  # one broken benchmark must not hide the others
        return [], traceback.format_exc()
    seconds = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    rows: Rows = []
    for row in result:
        missing = {"benchmark", "setting", "value", "unit", "ratio"} - set(row)
        if missing:
            return [], f"benchmark {name}: row {row} lacks {sorted(missing)}"
        rows.append(
            {**row, "peak_rss_mib": round(_peak_rss_mib(), 1), "seconds": round(seconds, 1)}
            | ({"peak_gpu_mib": round(gpu, 1)} if gpu is not None else {})
        )
    return rows, None


def run_all(
    tiny: bool, only: Sequence[str] | None = None, threads: int = 1
) -> tuple[Rows, list[str]]:
    """Run each benchmark in a fresh process (so its peak memory is its own); returns all rows
    and the names of the ones that failed."""
    rows: Rows = []
    failed: list[str] = []
    root = Path(__file__).resolve().parent.parent
    for name in module_names():
        if only and name not in only:
            continue
        print(f"[run ] {name}{' (tiny)' if tiny else ''} ...", file=sys.stderr, flush=True)
        args = [sys.executable, "-m", "benchmarks", "--child", name, "--threads", str(threads)]
        proc = subprocess.run(
            args + (["--tiny"] if tiny else []), cwd=root, capture_output=True, text=True
        )
        sys.stderr.write(proc.stderr)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            print(f"[fail] {name}: exit code {proc.returncode}", file=sys.stderr)
            failed.append(name)
            continue
        report = json.loads(lines[-1])  # the child's last line; benchmarks may print before it
        if report["error"] is not None:
            print(report["error"], file=sys.stderr)
            failed.append(name)
        elif not report["rows"]:
            print(f"[skip] {name}: no run(tiny) function", file=sys.stderr)
        rows += report["rows"]
    return rows, failed


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown(rows: Rows, info: dict[str, Any]) -> str:
    """The machine line and the table, as markdown."""
    gpu_col = any("peak_gpu_mib" in r for r in rows)
    head = ["benchmark", "setting", "value", "unit", "ratio", "peak RSS MiB"]
    head += ["peak GPU MiB"] if gpu_col else []
    head += ["note"]
    lines = [
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores, "
        f"{info['torch_threads']} torch thread(s)"
        + (f", {info['gpu']}" if info["gpu"] else "")
        + f"), Python {info['python']}, torch {info['torch']}, Lightning {info['lightning']}, "
        f"torchmetrics {info['torchmetrics']}"
        + (f"; 1-min load average {info['load_avg_1m']}" if "load_avg_1m" in info else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["benchmark"], r["setting"], r["value"], r["unit"], r["ratio"], r["peak_rss_mib"]]
        cells += [r.get("peak_gpu_mib")] if gpu_col else []
        cells += [r.get("note", "")]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tests)")
    parser.add_argument("--only", nargs="+", default=None, help="benchmark module names")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write rows + machine here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one, in this process
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child is not None:
        rows, error = run_one(args.child, args.tiny)
        print(json.dumps({"rows": rows, "error": error}))
        return 0
    info = machine()
    rows, failed = run_all(args.tiny, args.only, args.threads)
    print(markdown(rows, info))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"machine": info, "rows": rows, "failed": failed}, indent=2)
        )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
