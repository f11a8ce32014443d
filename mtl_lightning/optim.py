"""Optimisation helpers: learning-rate schedules whose length follows the run
(``trainer.max_epochs``), and torch's faster optimizer implementations on the CPU (``fused``
Adam and AdamW, ``foreach`` for the others)."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR

__all__ = ["CosineAnnealingToMaxEpochs", "fit_schedule_to_run", "foreach_on_cpu", "fused_on_cpu"]

#: the optimizers whose ``fused`` implementation has a CPU kernel (torch >= 2.4)
FUSED_ON_CPU = (torch.optim.Adam, torch.optim.AdamW)


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


def foreach_on_cpu(optimizer: Any) -> Any:
    """``optimizer``, each of its parameter groups that left the implementation to torch
    (``foreach=None``) and holds CPU tensors only set to ``foreach=True``; returned as given.

    On CPU, torch's default is its for-loop implementation, which dispatches a dozen operations
    per parameter (AdamW on the dense five-task model's 32 tensors: 1.4 ms a step, the
    ``foreach`` one 0.8 ms). On the CPU both give the same values, bit for bit
    (``tests/test_optim.py``); on CUDA, ``foreach`` is torch's default already.
    Groups with ``fused``, ``capturable`` or ``differentiable`` set, or a ``foreach`` given,
    are left alone, as is any optimizer that takes no ``foreach``.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> foreach_on_cpu(torch.optim.AdamW([w])).param_groups[0]["foreach"]
        True
        >>> foreach_on_cpu(torch.optim.AdamW([w], foreach=False)).param_groups[0]["foreach"]
        False
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    for group in optimizer.param_groups:
        left_to_torch = "foreach" in group and group["foreach"] is None and not group.get("fused")
        if left_to_torch and _plain_cpu_group(group):
            group["foreach"] = True
    return optimizer


def _plain_cpu_group(group: dict[str, Any]) -> bool:
    """Whether ``group`` holds strided CPU tensors only and is neither capturable nor
    differentiable (the implementations' other modes, left to torch)."""
    if any(group.get(flag) for flag in ("capturable", "differentiable")):
        return False
    params = group["params"]
    return bool(params) and all(
        p.device.type == "cpu" and p.layout == torch.strided for p in params
    )


def fused_on_cpu(optimizer: Any) -> Any:
    """``optimizer``, an Adam or AdamW's parameter groups that left the implementation to torch
    (``foreach=None``, ``fused=None``) and hold floating-point CPU tensors only set to
    ``fused=True``; any other optimizer's groups take :func:`foreach_on_cpu`. Returned as given.

    torch's fused kernel updates every tensor of a group in one call: AdamW on the dense
    five-task model's 32 parameter tensors steps 2-3x faster than with ``foreach``, which is
    itself faster than the default for-loop (``docs/performance-small-models.md``). The values
    are those of the same algorithm, within float rounding of the for-loop's (not bit for bit:
    ``tests/test_optim.py``). A run that must match the for-loop exactly passes
    ``foreach=False`` to its optimizer (``fused=False`` gives the ``foreach`` one, equal to
    it bit for bit): a choice made is kept. On CUDA nothing changes (``foreach`` is torch's
    default there; ``16-mixed``, whose ``GradScaler`` meets fused optimizers differently,
    runs only there).

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> fused_on_cpu(torch.optim.AdamW([w])).param_groups[0]["fused"]
        True
        >>> fused_on_cpu(torch.optim.AdamW([w], fused=False)).param_groups[0]["fused"]
        False
        >>> fused_on_cpu(torch.optim.SGD([w], lr=0.1)).param_groups[0]["foreach"]
        True
    """
    if isinstance(optimizer, FUSED_ON_CPU) and torch.__version__ >= (2, 4):
        for group in optimizer.param_groups:
            if group.get("fused") is not None or group.get("foreach") is not None:
                continue
            if _plain_cpu_group(group) and all(p.is_floating_point() for p in group["params"]):
                group["fused"] = True
    return foreach_on_cpu(optimizer)  # the groups left (an explicit fused=False: foreach)
