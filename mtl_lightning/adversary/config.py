"""`AdversaryConfig`: how the model attacks (and defends against) one adversarial task."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mtl_lightning.tasks import TaskSpec

Objective = Literal["reversal", "confusion", "hsic"]
OBJECTIVES = ("reversal", "confusion", "hsic")


@dataclass(frozen=True)
class AdversaryConfig:
    """The attackers of an adversarial task and what the trunk does about them.

    Args:
        attackers: Hidden width of each attacker of the ensemble (``0``: a linear attacker).
            Each sits behind a non-affine BatchNorm, so it reads standardised embeddings.
        steps: Optimizer steps of every attacker per training batch, on the detached embedding
            (its *best response* to the current trunk).
        memory: The steps train on the latest ``memory`` samples (this batch's and the previous
            ones', detached), not on the batch alone (``0``).
        lr_multiplier: The attackers' learning rate, as a multiple of the model optimizer's
            (first group's) learning rate.
        optimizer: The attackers' optimizer: ``"adam"`` (default) or ``"sgd"`` (plain SGD,
            whose steps are linear in the gradient: float-rounding differences, e.g. between
            one process and several, stay rounding-sized; Adam's first steps are ``lr *
            sign(g)``).
        reinit_every_n_epochs: Every this many epochs one attacker (round-robin) is drawn
            afresh, so none stays stuck where the trunk has learnt to fool it (``0``: never).
        objective: What the trunk minimises, times lambda (the schedule callback's value);
            ``None``: the task's own ``TaskSpec.adversary``. ``"reversal"``: minus the
            attackers' cross-entropy; ``"confusion"``: the attackers' cross-entropy to the
            uniform prediction (maximum entropy); ``"hsic"``: the kernel dependence between
            the embedding and the labels (:func:`~mtl_lightning.adversary.class_mmd`), which
            needs no attacker to be fooled.
        erase: Put a LEACE eraser (:class:`~mtl_lightning.adversary.LinearEraser`) for this
            task between the trunk and every head, refitted at the end of each training epoch
            on that epoch's embeddings (``test``, ``predict`` and ``probe`` see erased ones).
        bandwidths: Kernel bandwidths of ``"hsic"``, as multiples of the batch's median squared
            distance.

    Example:
        >>> AdversaryConfig(steps=3).steps
        3
        >>> AdversaryConfig(attackers=[])
        Traceback (most recent call last):
        ...
        ValueError: AdversaryConfig: attackers must list at least one attacker (M >= 1), got []
    """

    attackers: Sequence[int] = field(default=(0, 128, 128))
    steps: int = 5
    memory: int = 512
    lr_multiplier: float = 5.0
    optimizer: Literal["adam", "sgd"] = "adam"
    reinit_every_n_epochs: int = 1
    objective: Objective | None = None
    erase: bool = False
    bandwidths: Sequence[float] = field(default=(1.0,))

    def __post_init__(self) -> None:
        object.__setattr__(self, "attackers", tuple(self.attackers))
        object.__setattr__(self, "bandwidths", tuple(float(b) for b in self.bandwidths))
        where = "AdversaryConfig"
        if len(self.attackers) < 1:
            raise ValueError(f"{where}: attackers must list at least one attacker (M >= 1), got []")
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 0 for h in self.attackers):
            raise ValueError(
                f"{where}: attackers are hidden widths (0 = linear), integers >= 0; "
                f"got {list(self.attackers)}"
            )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"{where}: steps (k) must be an integer >= 1, got {self.steps!r}")
        if not isinstance(self.memory, int) or self.memory < 0:
            raise ValueError(f"{where}: memory must be an integer >= 0, got {self.memory!r}")
        if not (math.isfinite(self.lr_multiplier) and self.lr_multiplier > 0):
            raise ValueError(f"{where}: lr_multiplier must be > 0, got {self.lr_multiplier}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"{where}: optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not isinstance(self.reinit_every_n_epochs, int) or self.reinit_every_n_epochs < 0:
            raise ValueError(
                f"{where}: reinit_every_n_epochs must be an integer >= 0, "
                f"got {self.reinit_every_n_epochs!r}"
            )
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ValueError(
                f"{where}: unknown objective {self.objective!r}; use one of {list(OBJECTIVES)}"
            )
        if not self.bandwidths or any(not (b > 0 and math.isfinite(b)) for b in self.bandwidths):
            raise ValueError(f"{where}: bandwidths must be > 0, got {list(self.bandwidths)}")

    def objective_for(self, task: TaskSpec) -> str:
        """The trunk objective used for ``task``: this config's, else the task's own."""
        return self.objective if self.objective is not None else task.adversary


def check_adversary_tasks(
    tasks: Sequence[TaskSpec], per_task: Mapping[str, AdversaryConfig]
) -> None:
    """Every configured task exists, is adversarial and a classification task.

    Example:
        >>> check_adversary_tasks([TaskSpec("emotion", 5)], {"emotion": AdversaryConfig()})
        Traceback (most recent call last):
        ...
        ValueError: adversaries['emotion']: attackers and erasure need an adversarial task, but 'emotion' has role='main'
    """
    by_name = {t.name: t for t in tasks}
    for name in per_task:
        task = by_name.get(name)
        if task is None:
            raise ValueError(f"adversaries[{name!r}]: no such task; tasks: {sorted(by_name)}")
        if not task.adversarial:
            raise ValueError(
                f"adversaries[{name!r}]: attackers and erasure need an adversarial task, "
                f"but {name!r} has role='main'"
            )
        if not task.is_classification:
            raise ValueError(
                f"adversaries[{name!r}]: attackers and erasure need a classification task, "
                f"but {name!r} is {task.kind}"
            )


def as_config(value: AdversaryConfig | Mapping[str, Any]) -> AdversaryConfig:
    """An :class:`AdversaryConfig` from itself or its plain-dict form (as checkpoints keep it)."""
    return value if isinstance(value, AdversaryConfig) else AdversaryConfig(**dict(value))


def config_dict(value: AdversaryConfig | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Plain-dict form (lists, not tuples), for hyperparameters and ``weights_only`` loading.

    Example:
        >>> config_dict(AdversaryConfig(steps=2))["steps"]
        2
    """
    if value is None:
        return None
    plain = asdict(as_config(value))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}


def adversary_configs(
    tasks: Sequence[TaskSpec],
    adversary: AdversaryConfig | Mapping[str, Any] | None,
    adversaries: Mapping[str, AdversaryConfig | Mapping[str, Any]] | None,
) -> dict[str, AdversaryConfig]:
    """The attacker-ensemble config of each adversarial task that has one: ``adversaries[name]``,
    else ``adversary`` (the model's ``adversary_config``); an ``hsic`` task without either gets the defaults.

    A regression adversary under a model-wide ``adversary`` keeps its jointly trained head.

    Example:
        >>> tasks = [TaskSpec("emotion", 5), TaskSpec("speaker", 11, role="adversarial")]
        >>> sorted(adversary_configs(tasks, AdversaryConfig(), None))
        ['speaker']
        >>> adversary_configs(tasks, None, None)
        {}
    """
    per_task = {k: as_config(v) for k, v in (adversaries or {}).items()}
    check_adversary_tasks(tasks, per_task)
    default = as_config(adversary) if adversary is not None else None
    out: dict[str, AdversaryConfig] = {}
    for t in tasks:
        if not t.adversarial or not t.is_classification:
            continue
        config = per_task.get(t.name, default)
        if config is None and t.adversary == "hsic":
            config = AdversaryConfig()
        if config is not None:
            out[t.name] = config
    return out
