"""Per-task result summary: verdicts against chance, a printable table and ``summary.json``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtl_lightning.tasks import TaskSpec

CHANCE_TOLERANCE = 0.05


def verdict(
    task: TaskSpec,
    balanced_acc: float,
    tolerance: float = CHANCE_TOLERANCE,
    baseline: float = float("nan"),
) -> str:
    """Judge a task's balanced accuracy against its chance level ``1/K``; a multilabel task's
    ``f1_macro`` (passed as ``balanced_acc``) against its ``baseline``, the ``f1_macro`` of the
    best constant predictor (:func:`~mtl_lightning.metrics.constant_f1_macro`).

    An adversary *below* chance is confidently wrong, which still leaks the attribute, so only
    ``|balanced_acc - chance| <= tolerance`` counts as "at chance".

    Example:
        >>> adv = TaskSpec("speaker", 10, role="adversarial")
        >>> verdict(adv, 0.12), verdict(adv, 0.30), verdict(adv, 0.01)
        ('at chance', 'above chance (leaks)', 'below chance (leaks)')
        >>> verdict(TaskSpec("emotion", 5), 0.93)
        'learned'
        >>> verdict(TaskSpec("tags", 3, kind="multilabel"), 0.55, baseline=0.53)
        'not learned (at baseline)'
    """
    if task.is_multilabel:
        if not (math.isfinite(balanced_acc) and math.isfinite(baseline)):
            return "n/a"
        return "learned" if balanced_acc - baseline > tolerance else "not learned (at baseline)"
    if not task.is_classification or not math.isfinite(balanced_acc):
        return "n/a"
    delta = balanced_acc - task.chance
    if task.adversarial:
        if abs(delta) <= tolerance:
            return "at chance"
        return "above chance (leaks)" if delta > 0 else "below chance (leaks)"
    return "learned" if delta > tolerance else "not learned (at chance)"


def _value(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key)
    if value is None:
        return float("nan")
    return float(value.item() if hasattr(value, "item") else value)


def task_results(
    tasks: Sequence[TaskSpec], metrics: Mapping[str, Any], stage: str = "val"
) -> list[dict[str, Any]]:
    """One record per task from logged ``{stage}/{task}/...`` metrics, with its verdict.

    A multilabel task's record has ``f1_micro``, ``f1_macro``, ``exact_match`` and
    ``baseline``; its verdict compares ``f1_macro`` with the baseline.

    Example:
        >>> rows = task_results([TaskSpec("a", 2)], {"val/a/acc": 0.9, "val/a/balanced_acc": 0.8})
        >>> rows[0]["verdict"], rows[0]["chance"]
        ('learned', 0.5)
    """
    rows = []
    for task in tasks:
        keys = {
            "classification": ("loss", "acc", "balanced_acc", "f1", "majority"),
            "multilabel": ("loss", "f1_micro", "f1_macro", "exact_match", "baseline"),
        }.get(task.kind, ("loss", "mse", "mae"))
        record: dict[str, Any] = {
            "task": task.name,
            "role": task.role,
            "kind": task.kind,
            "size": task.size,
        }
        for key in keys:
            record[key] = _value(metrics, f"{stage}/{task.name}/{key}")
        if task.is_classification:
            record["chance"] = task.chance
            record["verdict"] = verdict(task, record["balanced_acc"])
        elif task.is_multilabel:
            record["verdict"] = verdict(task, record["f1_macro"], baseline=record["baseline"])
        rows.append(record)
    return rows


def add_probe_results(rows: Sequence[dict[str, Any]], probes: Sequence[Any]) -> None:
    """Put each probe's balanced accuracy in its task's row as ``probe_linear`` / ``probe_mlp``.

    Example:
        >>> from types import SimpleNamespace as P
        >>> rows = task_results([TaskSpec("a", 2)], {})
        >>> add_probe_results(rows, [P(task="a", probe="mlp", balanced_acc=0.5)])
        >>> rows[0]["probe_mlp"]
        0.5
    """
    by_task = {r["task"]: r for r in rows}
    for p in probes:
        if p.task in by_task:
            by_task[p.task][f"probe_{p.probe}"] = float(p.balanced_acc)


def format_table(rows: Sequence[Mapping[str, Any]], stage: str = "val") -> str:
    """Plain-text table: task, role, accuracy, balanced accuracy, chance, verdict; and the
    linear and MLP probes' balanced accuracy when a probe ran (``-`` for unprobed tasks).
    A multilabel task shows its exact match, ``f1_macro`` and baseline in those columns.

    Example:
        >>> print(format_table(task_results([TaskSpec("a", 2)], {"val/a/balanced_acc": 0.5})))
        task  role  val acc  val balanced acc  chance  verdict
        a     main      nan             0.500   0.500  not learned (at chance)
        >>> tags = TaskSpec("tags", 3, kind="multilabel")
        >>> logged = {"val/tags/f1_macro": 0.8, "val/tags/exact_match": 0.6, "val/tags/baseline": 0.5}
        >>> print(format_table(task_results([tags], logged)))
        task  role      val acc  val balanced acc  chance  verdict
        tags  main  exact 0.600    f1_macro 0.800   0.500  learned
    """
    probe_keys = [k for k in ("probe_linear", "probe_mlp") if any(k in r for r in rows)]
    header = ["task", "role", f"{stage} acc", f"{stage} balanced acc", "chance"]
    header += [k.replace("probe_", "") + " probe" for k in probe_keys] + ["verdict"]
    body = []
    for r in rows:
        probes = [f"{r[k]:.3f}" if k in r else "-" for k in probe_keys]
        if r["kind"] == "classification":
            cells = [r["task"], r["role"], f"{r['acc']:.3f}", f"{r['balanced_acc']:.3f}"]
            body.append(cells + [f"{r['chance']:.3f}", *probes, r["verdict"]])
        elif r["kind"] == "multilabel":
            cells = [r["task"], r["role"], f"exact {r['exact_match']:.3f}"]
            cells += [f"f1_macro {r['f1_macro']:.3f}", f"{r['baseline']:.3f}"]
            body.append(cells + [*probes, r["verdict"]])
        else:
            cells = [r["task"], r["role"], f"mse {r['mse']:.4f}", f"mae {r['mae']:.4f}", "-"]
            body.append(cells + probes + ["-"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    numeric = set(range(2, 5 + len(probe_keys)))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header)] + [line(b) for b in body])


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON through a temporary file and ``os.replace`` so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(data), f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_summary(path: str | os.PathLike[str], section: str, payload: Any) -> dict[str, Any]:
    """Merge ``payload`` under ``section`` into the JSON file at ``path`` (created if absent)."""
    path = Path(path)
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data[section] = payload
    write_json_atomic(path, data)
    return data
