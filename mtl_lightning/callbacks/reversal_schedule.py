"""`GradientReversalSchedule`: set the reversal strength from training progress."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl

from mtl_lightning.log_cadence import logger_writes_step

Schedule = Literal["constant", "linear", "dann"]


def grl_lambda(
    progress: float,
    schedule: Schedule = "dann",
    max_lambda: float = 1.0,
    gamma: float = 10.0,
    warmup: float = 1.0,
) -> float:
    """Reversal strength at training progress ``p = progress`` (clipped to ``[0, 1]``).

    - ``constant``: ``max_lambda``.
    - ``linear``: ``max_lambda * min(1, p / warmup)`` (warm-up over the first ``warmup`` fraction).
    - ``dann``: ``max_lambda * (2 / (1 + exp(-gamma * p)) - 1)`` (Ganin & Lempitsky, 2015).

    Example:
        >>> grl_lambda(0.0), round(grl_lambda(0.5), 4), round(grl_lambda(1.0), 4)
        (0.0, 0.9866, 0.9999)
        >>> grl_lambda(0.25, "linear", max_lambda=2.0, warmup=0.5)
        1.0
    """
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "constant":
        return float(max_lambda)
    if schedule == "linear":
        return float(max_lambda) * (1.0 if warmup <= 0 else min(1.0, p / warmup))
    if schedule == "dann":
        return float(max_lambda) * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
    raise ValueError(
        f"unknown gradient-reversal schedule {schedule!r}; use constant, linear or dann"
    )


class GradientReversalSchedule(pl.Callback):
    """Set the model's gradient-reversal lambda before every training step; log ``train/grl_lambda``
    on the steps the logger writes (:func:`~mtl_lightning.log_cadence.logger_writes_step`).

    Progress is ``p = global_step / trainer.estimated_stepping_batches``: a pure function of the
    step, so a resumed run continues the schedule exactly and every DDP rank computes the same
    value. The model must expose a settable ``grl_lambda`` attribute.

    Args:
        schedule: ``constant``, ``linear`` or ``dann``.
        max_lambda: Final (or constant) strength. ``0`` gives the no-adversary control run.
        gamma: Steepness of the ``dann`` schedule.
        warmup: Fraction of training over which ``linear`` ramps up.
    """

    def __init__(
        self,
        schedule: Schedule = "dann",
        max_lambda: float = 1.0,
        gamma: float = 10.0,
        warmup: float = 1.0,
    ) -> None:
        if schedule not in ("constant", "linear", "dann"):
            raise ValueError(f"unknown schedule {schedule!r}; use constant, linear or dann")
        if not math.isfinite(max_lambda) or max_lambda < 0:
            raise ValueError(f"max_lambda must be finite and >= 0, got {max_lambda}")
        if gamma <= 0 or warmup < 0:
            raise ValueError(f"gamma must be > 0 and warmup >= 0, got {gamma}, {warmup}")
        self.schedule: Schedule = schedule
        self.max_lambda = max_lambda
        self.gamma = gamma
        self.warmup = warmup

    def value_at(self, step: int, total_steps: float) -> float:
        """Lambda at optimizer step ``step`` of ``total_steps``."""
        progress = step / total_steps if total_steps and math.isfinite(total_steps) else 0.0
        return grl_lambda(progress, self.schedule, self.max_lambda, self.gamma, self.warmup)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the class first: reading the property costs a host copy of the tensor each step
        if not hasattr(type(pl_module), "grl_lambda") and not hasattr(pl_module, "grl_lambda"):
            raise AttributeError(
                f"{type(pl_module).__name__} has no `grl_lambda`; GradientReversalSchedule needs it"
            )
        value = self.value_at(trainer.global_step, trainer.estimated_stepping_batches)
        pl_module.grl_lambda = value
        if logger_writes_step(trainer, trainer.global_step + 1):
            pl_module.log(
                "train/grl_lambda", value, on_step=True, on_epoch=False, batch_size=1,
                prog_bar=bool(getattr(pl_module, "has_adversary", False)),
            )  # fmt: skip
