"""The Custom Scalars layout: one section per concern, built from the tasks and the logged tags.

TensorBoard's Custom Scalars page colours lines by run, never by tag, so every chart here
holds few lines that tell themselves apart: a metric beside its flat chance/majority line, or
one tag per chart where several curves would look alike (weights, gradient cosines, affinity).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from mtl_lightning.tasks import TaskSpec

Layout = dict[str, dict[str, list[Any]]]
STAGES = ("val", "train", "test")  # the order of the sections
_METRICS = {
    "classification": ("acc", "balanced_acc", "chance", "majority"),
    "multilabel": ("f1_micro", "f1_macro", "exact_match", "baseline"),
}


def tensorboard_layout(
    tasks: Sequence[TaskSpec],
    stages: Iterable[str] = ("val", "train"),
    tags: Collection[str] = (),
) -> Layout:
    """Custom-scalars layout (category -> chart title -> ``["Multiline", [tag regexes]]``).

    Sections, in order: ``{stage}: accuracy vs chance`` for each stage that ran (per task:
    accuracy and balanced accuracy beside the flat chance and majority lines; a multilabel
    task: its F1 scores and exact match beside its baseline; regression: mse, mae), ``losses``,
    ``adversaries and leakage`` (only with an adversarial task: lambda, and per task the best
    attacker, each attacker and the fresh probes against chance), then, only when ``tags``
    holds such tags, ``task weights`` (``train/weight/*``), ``gradient cosines``
    (``train/grad_cos/*``) and ``affinity`` (``affinity/{source}_to_{target}``, one chart per
    pair of different tasks; self-affinity is left out).

    Args:
        tasks: The model's tasks.
        stages: The stages that ran (``val``, ``train``, ``test``); the others get no section.
        tags: The logged scalar tags (e.g. ``trainer.callback_metrics``' keys).

    Example:
        >>> layout = tensorboard_layout([TaskSpec("emotion", 5)])
        >>> list(layout)
        ['val: accuracy vs chance', 'train: accuracy vs chance', 'losses']
        >>> layout["val: accuracy vs chance"]["emotion"][1][:3]
        ['val/emotion/acc', 'val/emotion/balanced_acc', 'val/emotion/chance']
        >>> tensorboard_layout([TaskSpec("tags", 3, kind="multilabel")])["val: accuracy vs chance"]
        {'tags': ['Multiline', ['val/tags/f1_micro', 'val/tags/f1_macro', 'val/tags/exact_match', 'val/tags/baseline']]}
        >>> a = tensorboard_layout([TaskSpec("a", 2), TaskSpec("b", 2)], tags=["affinity/a_to_a", "affinity/a_to_b"])
        >>> a["affinity: effect of source on target (self-affinity left out)"]
        {'a → b': ['Multiline', ['^affinity/a_to_b$']]}
    """
    ran = [s for s in STAGES if s in set(stages)]
    layout: Layout = {f"{s}: accuracy vs chance": _accuracy_charts(tasks, s) for s in ran}
    layout["losses"] = _loss_charts(tasks)
    if any(t.adversarial for t in tasks):
        layout["adversaries and leakage"] = _adversary_charts(tasks)
    sections = {
        "task weights (train/weight/*)": _one_chart_per_tag(tags, "train/weight/", "weight of "),
        "gradient cosines (train/grad_cos/*)": _one_chart_per_tag(tags, "train/grad_cos/", "cos "),
        "affinity: effect of source on target (self-affinity left out)": _affinity_charts(
            tasks, tags
        ),
    }
    layout.update({title: charts for title, charts in sections.items() if charts})
    return layout


def _accuracy_charts(tasks: Sequence[TaskSpec], stage: str) -> dict[str, list[Any]]:
    keys = {t.name: _METRICS.get(t.kind, ("mse", "mae")) for t in tasks}
    return {t.name: ["Multiline", [f"{stage}/{t.name}/{k}" for k in keys[t.name]]] for t in tasks}


def _loss_charts(tasks: Sequence[TaskSpec]) -> dict[str, list[Any]]:
    # every stage, always: TensorBoard merges the layouts of all runs by chart title, and a
    # test-only run's charts must equal a fit's to merge into one (absent tags draw nothing)
    charts: dict[str, list[Any]] = {
        "total": ["Multiline", ["train/loss_epoch", "val/loss", "test/loss"]]
    }
    for t in tasks:
        charts[t.name] = ["Multiline", [f"{s}/{t.name}/loss" for s in ("train", "val", "test")]]
    return charts


def _adversary_charts(tasks: Sequence[TaskSpec]) -> dict[str, list[Any]]:
    charts: dict[str, list[Any]] = {
        "lambda (adversary strength, train/grl_lambda)": ["Multiline", ["train/grl_lambda"]]
    }
    for t in tasks:
        if t.adversarial and t.is_classification:  # the worst case beside the fresh probes
            title = (
                f"{t.name}: best attacker, each attacker, probes vs chance (val/{t.name}/chance)"
            )
            charts[title] = [
                "Multiline",
                [
                    f"val/{t.name}/balanced_acc",
                    f"val/{t.name}/attacker/.*/balanced_acc",
                    f"probe/{t.name}/.*/balanced_acc",
                    f"val/{t.name}/chance",
                ],
            ]
    return charts


def _one_chart_per_tag(tags: Collection[str], prefix: str, title: str) -> dict[str, list[Any]]:
    names = sorted(t[len(prefix) :] for t in set(tags) if t.startswith(prefix))
    return {
        f"{title}{name.replace('__', ' · ')}": ["Multiline", [_exact(prefix + name)]]
        for name in names
    }


def _affinity_charts(tasks: Sequence[TaskSpec], tags: Collection[str]) -> dict[str, list[Any]]:
    logged, names = set(tags), [t.name for t in tasks]
    return {
        f"{a} → {b}": ["Multiline", [_exact(f"affinity/{a}_to_{b}")]]
        for a in names
        for b in names
        if a != b and f"affinity/{a}_to_{b}" in logged
    }


def _exact(tag: str) -> str:
    """A regex matching ``tag`` only (TensorBoard matches a chart's regex from the start)."""
    return f"^{re.escape(tag)}$"
