"""`TaskSpec`: the one description of a task that every other part loops over."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

TaskKind = Literal["classification", "regression"]
TaskRole = Literal["main", "adversarial"]
AdversaryKind = Literal["reversal", "confusion", "hsic"]


@dataclass(frozen=True)
class TaskSpec:
    """Describe one task of a multi-task model.

    Args:
        name: Unique task name; used in metric tags (``val/{name}/acc``) and batch keys.
        size: Number of classes (classification) or outputs (regression).
        kind: ``"classification"`` (cross-entropy) or ``"regression"`` (mean squared error).
        role: ``"main"`` tasks are learned; ``"adversarial"`` tasks sit behind gradient
            reversal so the shared representation is trained to carry no information about them.
        weight: Static weight of the task's loss in the total.
        adversary: How an adversarial task trains the trunk. ``"reversal"``: the head minimises
            its loss and the trunk gets ``-lambda`` times its gradient (Ganin & Lempitsky 2015).
            ``"confusion"``: the head learns on detached features and the trunk minimises
            ``lambda`` times the cross-entropy between the (frozen) head's prediction and the
            uniform distribution, so it is pushed to make the head *uncertain*, not wrong.
            ``"hsic"``: the head learns on detached features and the trunk minimises
            ``lambda`` times a kernel measure of dependence between the embedding and the labels
            (:func:`~mtl_lightning.adversary.class_mmd`); nothing to fool.
        only_when: A conditional task: ``{"seed": [1]}`` means this task's labels count only
            where task ``seed`` has label 1; elsewhere they are treated as missing. Missing
            labels (``-100`` for classes, NaN for regression) never enter the loss or metrics.

    Example:
        >>> spec = TaskSpec("speaker", 11, role="adversarial")
        >>> spec.adversarial, round(spec.chance, 4)
        (True, 0.0909)
    """

    name: str
    size: int
    kind: TaskKind = "classification"
    role: TaskRole = "main"
    weight: float = 1.0
    adversary: AdversaryKind = "reversal"
    only_when: Mapping[str, Sequence[int]] | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or not self.name.strip() == self.name:
            raise ValueError(
                f"TaskSpec name {self.name!r} must be non-empty, without '/' or spaces"
            )
        if self.kind not in ("classification", "regression"):
            raise ValueError(
                f"task {self.name!r}: kind must be 'classification' or 'regression', got {self.kind!r}"
            )
        if self.role not in ("main", "adversarial"):
            raise ValueError(
                f"task {self.name!r}: role must be 'main' or 'adversarial', got {self.role!r}"
            )
        if self.adversary not in ("reversal", "confusion", "hsic"):
            raise ValueError(
                f"task {self.name!r}: adversary must be 'reversal', 'confusion' or 'hsic', "
                f"got {self.adversary!r}"
            )
        if self.adversary != "reversal" and self.kind != "classification":
            raise ValueError(
                f"task {self.name!r}: the {self.adversary} adversary needs classification"
            )
        minimum = 2 if self.kind == "classification" else 1
        if not isinstance(self.size, int) or self.size < minimum:
            raise ValueError(
                f"task {self.name!r}: size must be an integer >= {minimum} for {self.kind}, "
                f"got {self.size!r}"
            )
        if self.only_when is not None:
            if not isinstance(self.only_when, Mapping) or len(self.only_when) != 1:
                raise ValueError(
                    f"task {self.name!r}: only_when must name exactly one task, e.g. "
                    f"{{'seed': [1]}}; got {self.only_when!r}"
                )
            ((other, values),) = self.only_when.items()
            if other == self.name:
                raise ValueError(f"task {self.name!r}: only_when cannot refer to itself")
            if isinstance(values, (str, bytes)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                raise ValueError(
                    f"task {self.name!r}: only_when[{other!r}] must be a list of class indices, "
                    f"got {values!r}"
                )
            object.__setattr__(self, "only_when", {str(other): [int(v) for v in values]})
        if not (self.weight >= 0.0) or self.weight == float("inf"):
            raise ValueError(
                f"task {self.name!r}: weight must be finite and >= 0, got {self.weight}"
            )

    @property
    def adversarial(self) -> bool:
        """Whether the task is trained adversarially (behind gradient reversal)."""
        return self.role == "adversarial"

    @property
    def is_classification(self) -> bool:
        """Whether the task is a classification task."""
        return self.kind == "classification"

    @property
    def chance(self) -> float:
        """Chance level of balanced accuracy (``1 / size``); NaN for regression."""
        return 1.0 / self.size if self.is_classification else float("nan")

    def to_dict(self) -> dict[str, object]:
        """Plain-dict form, for hyperparameter logging and ``summary.json``."""
        return asdict(self)


def validate_tasks(tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """Check a task list: non-empty, unique names, at least one main task.

    Example:
        >>> [t.name for t in validate_tasks([TaskSpec("a", 2), TaskSpec("b", 3)])]
        ['a', 'b']
    """
    tasks = [TaskSpec(**t) if isinstance(t, dict) else t for t in tasks]
    if not tasks:
        raise ValueError("at least one TaskSpec is required")
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate task names: {duplicates}")
    if not any(not t.adversarial for t in tasks):
        raise ValueError("at least one task must have role='main'; all tasks are adversarial")
    by_name = {t.name: t for t in tasks}
    for t in tasks:
        for other, values in (t.only_when or {}).items():
            if other not in by_name:
                raise ValueError(
                    f"task {t.name!r}: only_when refers to unknown task {other!r}; tasks: {names}"
                )
            cond = by_name[other]
            bad = [v for v in values if not cond.is_classification or not 0 <= v < cond.size]
            if bad:
                raise ValueError(
                    f"task {t.name!r}: only_when[{other!r}] values {bad} are not classes of "
                    f"{other!r} (a classification task with {cond.size} classes is needed)"
                )
    return tasks


def apply_conditions(
    tasks: Sequence[TaskSpec], conditions: Mapping[str, Mapping[str, Sequence[int]]] | None
) -> list[TaskSpec]:
    """Return ``tasks`` with ``only_when`` set from ``{task: {condition_task: [classes]}}``.

    Example:
        >>> tasks = apply_conditions([TaskSpec("seed", 2), TaskSpec("quality", 3)],
        ...                          {"quality": {"seed": [1]}})
        >>> tasks[1].only_when
        {'seed': [1]}
    """
    conditions = dict(conditions or {})
    unknown = sorted(set(conditions) - {t.name for t in tasks})
    if unknown:
        raise ValueError(f"conditions name unknown task(s) {unknown}")
    out = [
        dataclasses.replace(t, only_when=conditions[t.name]) if t.name in conditions else t
        for t in tasks
    ]
    return validate_tasks(out)
