"""`TaskSpec`: the one description of a task that every other part loops over."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

TaskKind = Literal["classification", "regression", "multilabel"]
TaskRole = Literal["main", "adversarial"]
AdversaryKind = Literal["reversal", "confusion", "hsic"]


@dataclass(frozen=True)
class TaskSpec:
    """Describe one task of a multi-task model.

    Args:
        name: Unique task name; used in metric tags (``val/{name}/acc``) and batch keys.
        size: Number of classes (classification), outputs (regression) or binary labels
            (multilabel).
        kind: ``"classification"`` (cross-entropy), ``"regression"`` (mean squared error) or
            ``"multilabel"``: ``size`` independent 0/1 labels per sample, targets a float
            ``[batch, size]`` tensor of 0./1. (an all-NaN row marks a missing sample), loss the
            binary cross-entropy with logits, metrics ``f1_micro``, ``f1_macro`` and
            ``exact_match`` (threshold 0.5 on the sigmoid); its baseline is the ``f1_macro`` of
            the best constant predictor (:func:`~mtl_lightning.metrics.constant_f1_macro`).
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
        class_weights: Main classification tasks: ``"balanced"`` (``n / (K * count_k)`` from
            the training split's labels, resolved once when fitting starts and kept in the
            model's checkpoint) or ``size`` positive floats, the cross-entropy's ``weight``.
            Main multilabel tasks: the BCE ``pos_weight`` per label (``"balanced"``:
            negatives / positives of each label in the training split).
        label_smoothing: Main classification tasks: cross-entropy label smoothing, in ``[0, 1)``.
        head_hidden: Hidden width of this task's head (None: the model's ``head_hidden``).
        head_depth: Hidden layers of this task's head, 0 for a linear head (None: one hidden
            layer, or none when the width is 0).

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
    class_weights: Literal["balanced"] | Sequence[float] | None = None
    label_smoothing: float = 0.0
    head_hidden: int | None = None
    head_depth: int | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or not self.name.strip() == self.name:
            raise ValueError(
                f"TaskSpec name {self.name!r} must be non-empty, without '/' or spaces"
            )
        if self.kind not in ("classification", "regression", "multilabel"):
            raise ValueError(
                f"task {self.name!r}: kind must be 'classification', 'regression' or "
                f"'multilabel', got {self.kind!r}"
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
        if self.adversarial and self.kind == "multilabel":
            raise ValueError(
                f"task {self.name!r}: a multilabel task cannot be adversarial (role='adversarial')"
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
        self._check_loss_options()
        self._check_head_options()

    def _check_loss_options(self) -> None:
        where = f"task {self.name!r}"
        weights = self.class_weights
        if weights is not None:
            if self.kind == "regression" or self.adversarial:
                raise ValueError(
                    f"{where}: class_weights apply to main classification and multilabel tasks, "
                    f"not to a{'n adversarial' if self.adversarial else ' regression'} task; "
                    f"got {weights!r}"
                )
            if isinstance(weights, str):
                if weights != "balanced":
                    raise ValueError(
                        f"{where}: class_weights must be 'balanced' or a list of {self.size} "
                        f"floats, got {weights!r}"
                    )
            else:
                values = _floats(weights)
                if values is None or len(values) != self.size:
                    raise ValueError(
                        f"{where}: class_weights must be 'balanced' or a list of {self.size} "
                        f"floats (one per {'label' if self.is_multilabel else 'class'}), "
                        f"got {weights!r}"
                    )
                bad = [i for i, v in enumerate(values) if not (math.isfinite(v) and v > 0)]
                if bad:
                    raise ValueError(
                        f"{where}: class_weights must be finite and > 0; "
                        f"entry {bad[0]} is {values[bad[0]]}"
                    )
                object.__setattr__(self, "class_weights", values)
        smoothing = self.label_smoothing
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
            raise ValueError(f"{where}: label_smoothing must be a float, got {smoothing!r}")
        if smoothing != 0.0:
            if not self.is_classification or self.adversarial:
                raise ValueError(
                    f"{where}: label_smoothing applies to main classification tasks, not to "
                    f"{'an adversarial' if self.adversarial else f'a {self.kind}'} task; "
                    f"got {smoothing}"
                )
            if not 0.0 <= smoothing < 1.0:
                raise ValueError(f"{where}: label_smoothing must be in [0, 1), got {smoothing}")
        object.__setattr__(self, "label_smoothing", float(smoothing))

    def _check_head_options(self) -> None:
        for field in ("head_hidden", "head_depth"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(
                    f"task {self.name!r}: {field} must be an integer >= 0 or None, got {value!r}"
                )
        if self.head_depth == 0 and self.head_hidden:
            raise ValueError(
                f"task {self.name!r}: head_depth 0 is a linear head, which has no hidden width; "
                f"got head_hidden {self.head_hidden}"
            )
        if self.head_hidden == 0 and self.head_depth:
            raise ValueError(
                f"task {self.name!r}: head_depth {self.head_depth} needs a hidden width > 0, "
                "got head_hidden 0"
            )

    @property
    def adversarial(self) -> bool:
        """Whether the task is trained adversarially (behind gradient reversal)."""
        return self.role == "adversarial"

    @property
    def is_classification(self) -> bool:
        """Whether the task is a (single-label, multi-class) classification task."""
        return self.kind == "classification"

    @property
    def is_multilabel(self) -> bool:
        """Whether the task has ``size`` independent binary labels per sample."""
        return self.kind == "multilabel"

    @property
    def chance(self) -> float:
        """Chance level of balanced accuracy (``1 / size``); NaN for other kinds."""
        return 1.0 / self.size if self.is_classification else float("nan")

    def to_dict(self) -> dict[str, object]:
        """Plain-dict form, for hyperparameter logging and ``summary.json``.

        The loss and head options appear only when set, so a task with their defaults has the
        same dict (and checkpoint hyperparameters) as before they existed.

        Example:
            >>> TaskSpec("a", 2).to_dict()
            {'name': 'a', 'size': 2, 'kind': 'classification', 'role': 'main', 'weight': 1.0, 'adversary': 'reversal', 'only_when': None}
            >>> TaskSpec("a", 2, class_weights=[1, 3]).to_dict()["class_weights"]
            [1.0, 3.0]
        """
        data = asdict(self)
        for field in _OPTIONAL_FIELDS:
            if data[field.name] == field.default:
                del data[field.name]
        if isinstance(self.class_weights, tuple):
            data["class_weights"] = list(self.class_weights)
        return data


def _floats(values: object) -> tuple[float, ...] | None:
    """``values`` as a tuple of floats, or None when it is not a sequence of real numbers."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    return tuple(float(v) for v in values)


_OPTIONAL_FIELDS = [
    f
    for f in dataclasses.fields(TaskSpec)
    if f.name in ("class_weights", "label_smoothing", "head_hidden", "head_depth")
]


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
