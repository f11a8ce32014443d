"""`python -m mtl_lightning compare`: each task alone vs all tasks together (vs suggested groups).

Every run is the same LightningCLI ``fit`` of the same config (same trunk, heads, data, seed and
budget); a run trains a subset of tasks by setting the other tasks' loss weights to 0, so they send
no gradient into the trunk (their heads still run forward; that cost is in the wall time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtl_lightning.tasks import TaskSpec


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


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table of the comparison rows."""
    header = ["task", "metric", "single", "multi", "delta", "rel %"]
    lines = ["  ".join(f"{h:>12}" for h in header)]
    for r in rows:
        lines.append(
            "  ".join(
                f"{v:>12.4f}" if isinstance(v, float) else f"{v!s:>12}"
                for v in (r["task"], r["metric"], r["single"], r["multi"], r["delta"], r["rel"])
            )
        )
    return "\n".join(lines)


def train_subset(config_args: Sequence[str], active: Sequence[str] | None) -> dict[str, Any]:
    """Fit the config with only ``active`` tasks weighted (``None``: all); validation metrics."""
    from mtl_lightning.cli import main

    cli = main(list(config_args), run=False)
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
        key, _ = task_metric(t)
        value = cli.trainer.callback_metrics.get(f"val/{t.name}/{key}")
        metrics[t.name] = float(value) if value is not None else math.nan
    return {"tasks": list(model.tasks), "metrics": metrics, "seconds": seconds}


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
    )
    p.add_argument("--config", required=True, help="a LightningCLI fit config")
    p.add_argument("--groups", help='extra group runs, e.g. "t1,t2;t3,t4;t5"')
    p.add_argument("--output", default="compare.json", help="where to save the results")
    return p


def run(argv: Sequence[str]) -> dict[str, Any]:
    """Run every training, print the table and save ``--output`` (JSON)."""
    args, fit_args = parser().parse_known_args(list(argv))
    # the config alone, as `fit --config X` resolves it (the packaged default is not merged in)
    config_args = ["--config", args.config, *fit_args]
    multi = train_subset(config_args, None)
    tasks: list[TaskSpec] = [t for t in multi["tasks"] if not t.adversarial]
    better = {t.name: task_metric(t)[1] for t in tasks}
    singles = {t.name: train_subset(config_args, [t.name]) for t in tasks}
    single_metric = {n: r["metrics"][n] for n, r in singles.items()}
    multi_metric = {t.name: multi["metrics"][t.name] for t in tasks}
    rows = []
    for t in tasks:
        s, m = single_metric[t.name], multi_metric[t.name]
        sign = 1.0 if better[t.name] else -1.0
        rows.append(
            {
                "task": t.name,
                "metric": task_metric(t)[0],
                "single": s,
                "multi": m,
                "delta": m - s,
                "rel": 100.0 * sign * (m - s) / s,
            }
        )
    result: dict[str, Any] = {
        "rows": rows,
        "delta_m_percent": delta_m(single_metric, multi_metric, better),
        "seconds": {
            "multi": multi["seconds"],
            **{f"single/{n}": r["seconds"] for n, r in singles.items()},
        },
    }
    if args.groups:
        groups = parse_groups(args.groups)
        served: dict[str, float] = {}
        for group in groups:
            r = train_subset(config_args, group)
            result["seconds"]["group/" + ",".join(group)] = r["seconds"]
            for n in group:
                served[n] = (
                    max(served.get(n, -math.inf), r["metrics"][n])
                    if better[n]
                    else min(served.get(n, math.inf), r["metrics"][n])
                )
        result["groups"] = {"groups": groups, "metrics": served}
        if set(served) == set(single_metric):
            result["groups"]["delta_m_percent"] = delta_m(single_metric, served, better)
    text = format_table(rows) + f"\n\ndelta_m = {result['delta_m_percent']:+.2f}% (multi vs single)"
    if "groups" in result and "delta_m_percent" in result["groups"]:
        text += f"\ndelta_m = {result['groups']['delta_m_percent']:+.2f}% (groups vs single)"
    text += "\nwall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result["seconds"].items())
    print(text)
    Path(args.output).write_text(json.dumps(result, indent=1))
    return result
