"""Learning-rate schedules whose length follows the run (``trainer.max_epochs``)."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR

__all__ = ["CosineAnnealingToMaxEpochs", "fit_schedule_to_run"]


class CosineAnnealingToMaxEpochs(CosineAnnealingLR):
    """PyTorch's ``CosineAnnealingLR`` whose period ``T_max`` is the run's
    ``trainer.max_epochs`` unless given, so ``--trainer.max_epochs 3`` anneals over 3 epochs.

    :class:`~mtl_lightning.MultiTaskModule` sets the period when it builds its optimizers; a run
    resumed with a larger ``max_epochs`` anneals over the new length (a given ``T_max`` is kept,
    as in PyTorch).

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> schedule = CosineAnnealingToMaxEpochs(opt, eta_min=0.0)
        >>> fit_schedule_to_run(schedule, max_epochs=2)
        >>> for _ in range(2):
        ...     opt.step(); schedule.step()
        >>> schedule.T_max, round(opt.param_groups[0]["lr"], 6)
        (2, 0.0)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_max: int | None = None,  # noqa: N803 (PyTorch's name)
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.follows_max_epochs = T_max is None
        super().__init__(optimizer, T_max=T_max or 1, eta_min=eta_min, last_epoch=last_epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        period = self.T_max
        super().load_state_dict(state_dict)
        if self.follows_max_epochs:  # the run's length now, not the length it was saved with
            self.T_max, self.follows_max_epochs = period, True


def fit_schedule_to_run(scheduler: Any, max_epochs: int | None) -> None:
    """Give a schedule that follows the run (``follows_max_epochs``) its length.

    A run without ``max_epochs`` (``-1`` or None: until stopped) cannot anneal to its end: an
    error that says to give ``T_max``.
    """
    if not getattr(scheduler, "follows_max_epochs", False):
        return
    if max_epochs is None or max_epochs < 1:
        raise ValueError(
            f"{type(scheduler).__name__} anneals over trainer.max_epochs, but max_epochs is "
            f"{max_epochs}; set max_epochs or the scheduler's T_max"
        )
    scheduler.T_max = int(max_epochs)
