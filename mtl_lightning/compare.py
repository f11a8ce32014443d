"""`python -m mtl_lightning compare`: each task alone vs all tasks together (vs suggested groups).

Every run is the same LightningCLI ``fit`` of the same config (same trunk, heads, data, seed and
budget); a run trains a subset of tasks by setting the other tasks' loss weights to 0, so they send
no gradient into the trunk (their heads still run forward; that cost is in the wall time).

The console shows one line per run and one final table; each run keeps its checkpoints, logger and
``summary.json`` (``lightning_logs/version_N/``), only its progress bar, model summary and
per-task table are off (:data:`QUIET_FIT`, which the user's own arguments override).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mtl_lightning.console import quiet_library_noise
from mtl_lightning.tasks import TaskSpec

#: what each inner run's console leaves out; given before the user's arguments, so theirs win
QUIET_FIT = [
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--summary.print_table", "false",
]  # fmt: skip

#: ``compare --help``: where the other arguments go
EPILOG = """\
Every other argument goes to each run's `fit` (LightningCLI): --trainer.*, --model.*, --data.*,
--seed_everything, ... (see `python -m mtl_lightning fit --help`), e.g.

  python -m mtl_lightning compare --config configs/five_task_affinity.yaml --trainer.max_epochs 3

Each run keeps its checkpoints, logger and summary.json (lightning_logs/version_N/). The console
shows one line per run and one final table: the runs' progress bars, model summaries and per-task
tables are off (--trainer.enable_progress_bar true etc. turn them back on).
"""


def task_metric(task: TaskSpec) -> tuple[str, bool]:
    """The validation metric compared for a task and whether higher is better.

    Example:
        >>> task_metric(TaskSpec("a", 3)), task_metric(TaskSpec("b", 1, kind="regression"))
        (('balanced_acc', True), ('mse', False))
    """
    if task.is_multilabel:
        return ("f1_macro", True)
    return ("balanced_acc", True) if task.is_classification else ("mse", False)


def delta_m(
    single: Mapping[str, float], multi: Mapping[str, float], higher_better: Mapping[str, bool]
) -> float:
    """Mean relative change in percent (Maninis et al. 2019), sign-corrected so > 0 is better.

    ``100 / T * sum_t (-1)^{l_t} (M_multi,t - M_single,t) / M_single,t`` with ``l_t = 1`` when lower
    is better.

    Example:
        >>> delta_m({"a": 0.5, "b": 2.0}, {"a": 0.6, "b": 1.0}, {"a": True, "b": False})
        35.0
    """
    terms = []
    for name, base in single.items():
        sign = 1.0 if higher_better[name] else -1.0
        terms.append(sign * (multi[name] - base) / base)
    return 100.0 * sum(terms) / len(terms)


def format_cell(value: float | None, base: float | None = None, higher_better: bool = True) -> str:
    """A table cell: ``off`` for a task not trained in the run (never a verdict), else the
    value and, against the single-task ``base``, the sign-corrected relative change.

    Example:
        >>> format_cell(None), format_cell(0.5), format_cell(0.55, 0.5), format_cell(1.2, 1.0, False)
        ('off', '0.5', '0.55 (+10.0%)', '1.2 (-20.0%)')
    """
    if value is None:
        return "off"
    if base is None or not base:
        return f"{value:.4g}"
    sign = 1.0 if higher_better else -1.0
    rel = 100.0 * sign * (value - base) / base + 0.0  # + 0.0: no "-0.0%"
    return f"{value:.4g} ({rel:+.1f}%)"


def format_table(runs: Sequence[Mapping[str, Any]], tasks: Sequence[TaskSpec]) -> str:
    """The one comparison table: a row per ``single`` (each task alone) / ``all`` / group run,
    a column per task (``off``: weight 0 in that run), the run's Δm % vs single and wall time
    (plain ASCII: any console encoding prints it).

    Example:
        >>> a, b = TaskSpec("a", 2), TaskSpec("b", 1, kind="regression")
        >>> runs = [{"label": "single", "metrics": {"a": 0.5, "b": 2.0}, "seconds": 2.0},
        ...         {"label": "group b", "metrics": {"b": 1.0}, "seconds": 1.0}]
        >>> print(format_table(runs, [a, b]))
        run           a               b           delta_m %   time
        metric        bal. acc (max)  mse (min)
        single        0.5             2                   -  2.0 s
        group b       off             1 (+50.0%)      +50.0  1.0 s
    """
    better = {t.name: task_metric(t)[1] for t in tasks}
    single = next(r["metrics"] for r in runs if r["label"] == "single")
    short = {"balanced_acc": "bal. acc", "f1_macro": "f1 macro"}
    metric = [short.get(m, m) + (" (max)" if up else " (min)") for m, up in map(task_metric, tasks)]
    body = [["run", *(t.name for t in tasks), "delta_m %", "time"], ["metric", *metric, "", ""]]
    for r in runs:
        own = r["label"] == "single"
        cells = [
            format_cell(r["metrics"].get(t.name), None if own else single[t.name], better[t.name])
            for t in tasks
        ]
        common = {n: single[n] for n in r["metrics"]}
        dm = "-" if own else f"{delta_m(common, r['metrics'], better):+.1f}"
        body.append([r["label"], *cells, dm, f"{r['seconds']:.1f} s"])
    widths = [max(len(row[i]) for row in body) for i in range(len(body[0]))]
    widths[0] = max(widths[0], 12)
    right = {len(widths) - 2, len(widths) - 1}
    return "\n".join(
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in body
    )


def build_run(config_args: Sequence[str]) -> Any:
    """The LightningCLI of one run, not fitted (its console quieted, see :data:`QUIET_FIT`; the
    data description is printed once by ``compare`` itself, not by every run)."""
    from mtl_lightning.callbacks.data_summary import DataSummary
    from mtl_lightning.cli import lightning_cli

    with warnings.catch_warnings():  # compare passes args by design, with its own sys.argv
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter .*")
        cli = lightning_cli(list(config_args), run=False)
    cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, DataSummary)]
    return cli


def train_subset(
    config_args: Sequence[str], active: Sequence[str] | None, cli: Any = None
) -> dict[str, Any]:
    """Fit the config with only ``active`` tasks weighted (``None``: all); validation metrics of
    the tasks trained (weight not 0), the run's wall time and log directory."""
    cli = build_run(config_args) if cli is None else cli
    model = cli.model
    names = [t.name for t in model.tasks]
    if active is not None:
        unknown = sorted(set(active) - set(names))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; the config has {names}")
        model.tasks = [
            t if t.name in active else dataclasses.replace(t, weight=0.0) for t in model.tasks
        ]
    start = time.perf_counter()
    cli.trainer.fit(model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    metrics = {}
    for t in model.tasks:
        if t.weight == 0:  # switched off in this run: not a result, and no verdict
            continue
        key, _ = task_metric(t)
        value = cli.trainer.callback_metrics.get(f"val/{t.name}/{key}")
        metrics[t.name] = float(value) if value is not None else math.nan
    return {
        "tasks": list(model.tasks),
        "metrics": metrics,
        "seconds": seconds,
        "log_dir": cli.trainer.log_dir,
        "datamodule": cli.datamodule,
    }


@contextlib.contextmanager
def quiet_lightning_info() -> Iterator[list[warnings.WarningMessage]]:
    """Within: Lightning's INFO lines ("GPU available", "Seed set", ...) off and warnings
    recorded (yielded), for :func:`reissue` to print after the run's progress line."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield caught
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def reissue(caught: Sequence[warnings.WarningMessage], seen: set[str]) -> None:
    """Show each recorded warning whose text was not shown before (runs repeat them)."""
    for w in caught:
        if str(w.message) not in seen:
            seen.add(str(w.message))
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def progress(
    i: int, n: int, what: str, fit: Callable[[], dict[str, Any]], seen: set[str]
) -> dict[str, Any]:
    """Run ``fit`` under one console line:
    ``compare: run 3/9: single-task t3 ... done in 4.2 s, val balanced_acc t3 0.61 (dir)``."""
    print(f"compare: run {i}/{n}: {what} ...", end=" ", flush=True)
    caught: list[warnings.WarningMessage] = []
    try:
        with quiet_lightning_info() as caught:
            r = fit()
    except BaseException:
        print("failed", flush=True)
        reissue(caught, seen)
        raise
    tasks = {t.name: t for t in r["tasks"]}
    by_metric: dict[str, list[str]] = {}
    for n, v in r["metrics"].items():
        by_metric.setdefault(task_metric(tasks[n])[0], []).append(f"{n} {v:.4g}")
    values = "; ".join(f"{m} " + ", ".join(vs) for m, vs in by_metric.items())
    where = f" ({r['log_dir']})" if r["log_dir"] else ""
    print(f"done in {r['seconds']:.1f} s, val {values}{where}", flush=True)
    reissue(caught, seen)
    return r


def parse_groups(text: str) -> list[list[str]]:
    """``"a,b;c"`` -> ``[["a", "b"], ["c"]]``.

    Example:
        >>> parse_groups("t1,t2; t3")
        [['t1', 't2'], ['t3']]
    """
    return [[n.strip() for n in g.split(",") if n.strip()] for g in text.split(";") if g.strip()]


def parser() -> argparse.ArgumentParser:
    """The ``compare`` subcommand's argument parser (unknown options go to ``fit``)."""
    p = argparse.ArgumentParser(
        prog="python -m mtl_lightning compare",
        description="Train each task alone, all together and optionally groups; compare.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="a LightningCLI fit config")
    p.add_argument("--groups", help='extra group runs, e.g. "t1,t2;t3,t4;t5"')
    p.add_argument("--output", default="compare.json", help="where to save the results")
    return p


def train_all(config_args: Sequence[str], groups: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Every run, each under one progress line: all tasks, each task alone, each group."""
    seen: set[str] = set()
    with quiet_lightning_info() as caught:
        first = build_run(config_args)  # the "all" run, built first: it names the tasks
    reissue(caught, seen)
    tasks = [t for t in first.model.tasks if not t.adversarial]
    names = [t.name for t in first.model.tasks]
    unknown = sorted({n for g in groups for n in g} - set(names))
    if unknown:  # before any training
        raise ValueError(f"--groups: unknown tasks {unknown}; the config has {names}")
    plan: list[tuple[str, Sequence[str] | None]] = [("all tasks", None)]
    plan += [(f"single-task {t.name}", [t.name]) for t in tasks]
    plan += [(f"group {','.join(g)}", g) for g in groups]
    done = []
    for i, (what, active) in enumerate(plan, 1):
        cli = first if i == 1 else None
        fit = lambda a=active, c=cli: train_subset(config_args, a, cli=c)  # noqa: E731
        done.append(progress(i, len(plan), what, fit, seen))
    multi, n = done[0], len(tasks)
    return {
        "tasks": tasks,
        "multi": multi,
        "singles": {t.name: r for t, r in zip(tasks, done[1 : 1 + n], strict=True)},
        "groups": [(list(g), r) for g, r in zip(groups, done[1 + n :], strict=True)],
    }


def summarise(trained: Mapping[str, Any]) -> dict[str, Any]:
    """The saved results: per-task rows (single vs all), Δm, seconds, groups, every run."""
    tasks, multi, singles = trained["tasks"], trained["multi"], trained["singles"]
    better = {t.name: task_metric(t)[1] for t in tasks}
    single_metric = {n: r["metrics"][n] for n, r in singles.items()}
    multi_metric = {t.name: multi["metrics"].get(t.name, math.nan) for t in tasks}
    rows = []
    for t in tasks:
        s, m = single_metric[t.name], multi_metric[t.name]
        sign = 1.0 if better[t.name] else -1.0
        rows.append(
            {"task": t.name, "metric": task_metric(t)[0], "single": s, "multi": m}
            | {"delta": m - s, "rel": 100.0 * sign * (m - s) / s}
        )
    runs = [{"label": "all", **_run_record(multi)}]
    runs += [{"label": f"single {n}", **_run_record(r)} for n, r in singles.items()]
    runs += [{"label": "group " + ",".join(g), **_run_record(r)} for g, r in trained["groups"]]
    result: dict[str, Any] = {
        "rows": rows,
        "delta_m_percent": delta_m(single_metric, multi_metric, better),
        "seconds": {_seconds_key(r["label"]): r["seconds"] for r in runs},
        "runs": runs,
    }
    if trained["groups"]:
        served: dict[str, float] = {}
        for _, r in trained["groups"]:
            for n, v in r["metrics"].items():
                if n in better:
                    pick = max if better[n] else min
                    served[n] = pick(served.get(n, -math.inf if better[n] else math.inf), v)
        result["groups"] = {"groups": [g for g, _ in trained["groups"]], "metrics": served}
        if set(served) == set(single_metric):
            result["groups"]["delta_m_percent"] = delta_m(single_metric, served, better)
    return result


def _seconds_key(label: str) -> str:
    """``all`` -> ``multi``, ``single t1`` -> ``single/t1``, ``group a,b`` -> ``group/a,b``."""
    return "multi" if label == "all" else label.replace(" ", "/", 1)


def _run_record(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"metrics": r["metrics"], "seconds": r["seconds"], "log_dir": r["log_dir"]}


def report(trained: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """The console report: the data once, then the one table (single / all / each group)."""
    from mtl_lightning.callbacks.data_summary import describe_data

    tasks = trained["tasks"]
    singles = [r for r in result["runs"] if r["label"].startswith("single ")]
    single = {
        "label": "single",
        "metrics": {t.name: result["rows"][i]["single"] for i, t in enumerate(tasks)},
        "seconds": sum(r["seconds"] for r in singles),
    }
    others = [r for r in result["runs"] if not r["label"].startswith("single ")]
    lines = ["", describe_data(trained["multi"]["datamodule"], tasks), ""]
    lines += [
        "compare: validation metric per task and run (single: each task trained alone;",
        "all: every task together; (+x%): x% better than single; off: not trained there)",
    ]
    lines += [format_table([single, *others], tasks), ""]
    lines.append(f"delta_m = {result['delta_m_percent']:+.2f}% (multi vs single)")
    if "delta_m_percent" in result.get("groups", {}):
        lines.append(f"delta_m = {result['groups']['delta_m_percent']:+.2f}% (groups vs single)")
    return "\n".join(lines)


def run(argv: Sequence[str]) -> dict[str, Any]:
    """Run every training (one line each), print the table and save ``--output`` (JSON)."""
    args, fit_args = parser().parse_known_args(list(argv))
    quiet_library_noise(None)  # as for `fit`: here, not inside one run's warning records
    # the config alone, as `fit --config X` resolves it (the packaged default is not merged in);
    # the user's arguments come after QUIET_FIT, so theirs win
    config_args = ["--config", args.config, *QUIET_FIT, *fit_args]
    trained = train_all(config_args, parse_groups(args.groups) if args.groups else [])
    result = summarise(trained)
    print(report(trained, result), flush=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"compare: results saved to {args.output}")
    return result
