"""Per-task result summary: verdicts against chance, a printable table and ``summary.json``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mtl_lightning.tasks import TaskSpec

#: the smallest practical distance from chance (or from a multilabel task's baseline)
CHANCE_TOLERANCE = 0.05
#: fewer labelled samples than this and the verdict is "too few samples"
MIN_SAMPLES = 30
#: the normal quantile of the chance band (95%)
CHANCE_Z = 1.96


def chance_interval(
    task: TaskSpec,
    n: float = float("nan"),
    tolerance: float = CHANCE_TOLERANCE,
    baseline: float = float("nan"),
) -> tuple[float, float]:
    """The band of scores judged "at chance": ``c ± h`` with ``h = max(tolerance, z * se)``.

    For a classification task ``c = 1/K`` and ``se = sqrt(c (1 - c) / n)``, the binomial
    standard error of an accuracy at chance over ``n`` labelled samples (exact for balanced
    accuracy with balanced classes; imbalanced classes spread it more), ``z = 1.96`` (95%). The
    ±``tolerance`` floor keeps a large split from calling a negligible gain "learned". With
    ``n`` unknown (NaN) the band is ``c ± tolerance``; with ``n = 0`` it is NaN (nothing to
    judge). A multilabel task's band is its ``baseline ± tolerance`` (``f1_macro`` is no
    binomial proportion). NaN for regression.

    Example:
        >>> [round(x, 3) for x in chance_interval(TaskSpec("a", 2), n=100)]
        [0.402, 0.598]
        >>> [round(x, 3) for x in chance_interval(TaskSpec("a", 2), n=10_000)]
        [0.45, 0.55]
    """
    if n == 0:  # nothing to judge
        return float("nan"), float("nan")
    if task.is_multilabel:
        return baseline - tolerance, baseline + tolerance
    c = task.chance
    half = tolerance
    if math.isfinite(n) and n > 0:
        half = max(tolerance, CHANCE_Z * math.sqrt(c * (1 - c) / n))
    return c - half, c + half


def _count_verdict(n: float, min_samples: int) -> str | None:
    if not math.isfinite(n):
        return None
    if n == 0:
        return "no labelled samples"
    return f"too few samples (n={int(n)})" if n < min_samples else None


def verdict(
    task: TaskSpec,
    balanced_acc: float,
    tolerance: float = CHANCE_TOLERANCE,
    baseline: float = float("nan"),
    n: float = float("nan"),
    min_samples: int = MIN_SAMPLES,
) -> str:
    """Judge a task's balanced accuracy against its :func:`chance_interval` around ``1/K``; a
    multilabel task's ``f1_macro`` (passed as ``balanced_acc``) against its band around the
    ``baseline``, the ``f1_macro`` of the best constant predictor
    (:func:`~mtl_lightning.metrics.constant_f1_macro`).

    ``n`` is the number of labelled samples behind the score (``{stage}/{task}/n``). With none
    the verdict is "no labelled samples"; with fewer than ``min_samples`` (default 30, where
    the 95% band of a two-class task is already ±0.18 wide) it is "too few samples (n=...)",
    whatever the score. Otherwise a score inside the band is "at chance" ("at baseline"); an
    adversary *below* it is confidently wrong, which still leaks the attribute, and a main task
    below it is "not learned (below chance)" (check its labels).

    Example:
        >>> adv = TaskSpec("speaker", 10, role="adversarial")
        >>> verdict(adv, 0.12), verdict(adv, 0.30), verdict(adv, 0.01)
        ('at chance', 'above chance (leaks)', 'below chance (leaks)')
        >>> emotion = TaskSpec("emotion", 5)
        >>> verdict(emotion, 0.93), verdict(emotion, 0.02), verdict(emotion, 0.24, n=200)
        ('learned', 'not learned (below chance)', 'not learned (at chance)')
        >>> verdict(emotion, float("nan"), n=0), verdict(emotion, 0.9, n=1)
        ('no labelled samples', 'too few samples (n=1)')
        >>> verdict(TaskSpec("tags", 3, kind="multilabel"), 0.55, baseline=0.53)
        'not learned (at baseline)'
    """
    counted = _count_verdict(n, min_samples)
    if counted == "no labelled samples" or task.kind == "regression":
        return counted or "n/a"
    if task.is_multilabel:
        if not (math.isfinite(balanced_acc) and math.isfinite(baseline)):
            return "n/a"
    elif not task.is_classification or not math.isfinite(balanced_acc):
        return "n/a"
    if counted is not None:
        return counted
    low, high = chance_interval(task, n, tolerance, baseline)
    level = "baseline" if task.is_multilabel else "chance"
    side = "above" if balanced_acc > high else "below" if balanced_acc < low else "at"
    if task.adversarial:
        return f"at {level}" if side == "at" else f"{side} {level} (leaks)"
    return "learned" if side == "above" else f"not learned ({side} {level})"


def _value(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key)
    if value is None:
        return float("nan")
    return float(value.item() if hasattr(value, "item") else value)


def task_results(
    tasks: Sequence[TaskSpec], metrics: Mapping[str, Any], stage: str = "val"
) -> list[dict[str, Any]]:
    """One record per task from logged ``{stage}/{task}/...`` metrics, with its verdict.

    ``n`` is the number of labelled samples (``{stage}/{task}/n``, summed over DDP ranks;
    None when not logged) and ``chance_interval`` the band of :func:`chance_interval`. A
    multilabel task's record has ``f1_micro``, ``f1_macro``, ``exact_match`` and ``baseline``;
    its verdict compares ``f1_macro`` with the baseline.

    Example:
        >>> logged = {"val/a/acc": 0.9, "val/a/balanced_acc": 0.8, "val/a/n": 100}
        >>> row = task_results([TaskSpec("a", 2)], logged)[0]
        >>> row["verdict"], row["chance"], row["n"], [round(x, 3) for x in row["chance_interval"]]
        ('learned', 0.5, 100, [0.402, 0.598])
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
        n = _value(metrics, f"{stage}/{task.name}/n")
        record["n"] = int(n) if math.isfinite(n) else n
        score, baseline = float("nan"), record.get("baseline", float("nan"))
        if task.is_classification:
            record["chance"] = task.chance
            score = record["balanced_acc"]
        elif task.is_multilabel:
            score = record["f1_macro"]
        if task.kind != "regression":
            record["chance_interval"] = list(chance_interval(task, n, baseline=baseline))
        record["verdict"] = verdict(task, score, baseline=baseline, n=n)
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


def _count_cell(n: Any) -> str:
    return str(n) if isinstance(n, int) else "-"


def format_table(rows: Sequence[Mapping[str, Any]], stage: str = "val") -> str:
    """Plain-text table: task, role, accuracy, balanced accuracy, chance, labelled samples
    ``n`` (``-`` when not logged), verdict; and the linear and MLP probes' balanced accuracy
    when a probe ran (``-`` for unprobed tasks). A multilabel task shows its exact match,
    ``f1_macro`` and baseline in those columns.

    Example:
        >>> print(format_table(task_results([TaskSpec("a", 2)], {"val/a/balanced_acc": 0.5})))
        task  role  val acc  val balanced acc  chance  n  verdict
        a     main      nan             0.500   0.500  -  not learned (at chance)
        >>> tags = TaskSpec("tags", 3, kind="multilabel")
        >>> logged = {"val/tags/f1_macro": 0.8, "val/tags/exact_match": 0.6, "val/tags/baseline": 0.5}
        >>> print(format_table(task_results([tags], {**logged, "val/tags/n": 64})))
        task  role      val acc  val balanced acc  chance   n  verdict
        tags  main  exact 0.600    f1_macro 0.800   0.500  64  learned
    """
    probe_keys = [k for k in ("probe_linear", "probe_mlp") if any(k in r for r in rows)]
    header = ["task", "role", f"{stage} acc", f"{stage} balanced acc", "chance", "n"]
    header += [k.replace("probe_", "") + " probe" for k in probe_keys] + ["verdict"]
    body = []
    for r in rows:
        cells = [r["task"], r["role"]]
        if r["kind"] == "classification":
            cells += [f"{r['acc']:.3f}", f"{r['balanced_acc']:.3f}", f"{r['chance']:.3f}"]
        elif r["kind"] == "multilabel":
            cells += [f"exact {r['exact_match']:.3f}", f"f1_macro {r['f1_macro']:.3f}"]
            cells += [f"{r['baseline']:.3f}"]
        else:
            cells += [f"mse {r['mse']:.4f}", f"mae {r['mae']:.4f}", "-"]
        cells += [_count_cell(r.get("n")), *(f"{r[k]:.3f}" if k in r else "-" for k in probe_keys)]
        body.append([*cells, "-" if r.get("verdict", "n/a") == "n/a" else r["verdict"]])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    numeric = set(range(2, 6 + len(probe_keys)))

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


def epoch_index(trainer: Any) -> int:
    """The 0-based index of the last epoch that ran, as Lightning's progress bar (``Epoch 19``
    after 20 epochs), checkpoint names (``epoch=19``) and checkpoint files count.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> trainer = NS(fit_loop=NS(epoch_progress=NS(current=NS(started=20))))
        >>> epoch_index(trainer)
        19
    """
    return max(int(trainer.fit_loop.epoch_progress.current.started) - 1, 0)


def checkpoint_provenance(ckpt_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``checkpoint``, ``epoch`` and ``global_step`` of a Lightning checkpoint, read from the
    file (a fresh trainer that only loaded its weights says 0 and 0). ``epoch`` is as Lightning
    stored it, the trainer's ``current_epoch`` when it was saved: the 0-based epoch for one
    saved during an epoch, the number of epochs for one saved when training ended. None for
    what is unknown (no path; not a local file).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "last.ckpt"
        >>> torch.save({"epoch": 3, "global_step": 40, "state_dict": {}}, path)
        >>> info = checkpoint_provenance(path)
        >>> info["epoch"], info["global_step"], info["checkpoint"] == str(path)
        (3, 40, True)
    """
    info: dict[str, Any] = {"checkpoint": None, "epoch": None, "global_step": None}
    if not ckpt_path:
        return info
    info["checkpoint"] = str(ckpt_path)
    if Path(ckpt_path).is_file():  # memory-mapped: the weights are not read
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        info["epoch"], info["global_step"] = state.get("epoch"), state.get("global_step")
    return info


def training_summary_path(ckpt_path: str | os.PathLike[str] | None) -> Path | None:
    """The ``summary.json`` of the run a checkpoint belongs to (``<run>/summary.json`` for
    ``<run>/checkpoints/x.ckpt``, as ``probe`` and ``erase`` use); None for a checkpoint
    elsewhere.

    Example:
        >>> training_summary_path("lightning_logs/version_0/checkpoints/last.ckpt").as_posix()
        'lightning_logs/version_0/summary.json'
        >>> training_summary_path("model.ckpt") is None
        True
    """
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    return path.parent.parent / "summary.json" if path.parent.name == "checkpoints" else None
