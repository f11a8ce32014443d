"""What the module asks of its trainer, as small functions of the trainer (``None`` when the
module is not attached to one): DDP reductions, the AMP loss scale, the logging cadence, the
progress bar, a resumed epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mtl_lightning.log_cadence import logger_writes_step

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = [
    "loss_scale",
    "reduce_mean",
    "reduce_sum",
    "resumes_mid_epoch",
    "should_log_step",
    "shows_progress_bar",
]


def reduce_sum(trainer: pl.Trainer | None, tensor: Tensor) -> Tensor:
    """Sum over DDP ranks (identity in one process).

    Example:
        >>> reduce_sum(None, torch.ones(2))
        tensor([1., 1.])
    """
    if trainer is None or trainer.world_size == 1:
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="sum")


def reduce_mean(trainer: pl.Trainer | None, tensor: Tensor) -> Tensor:
    """Mean over DDP ranks (identity in one process)."""
    if trainer is None or trainer.world_size == 1:
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="mean")


def loss_scale(trainer: pl.Trainer | None, device: torch.device) -> float:
    """The AMP loss scale (16-mixed) that gradients written by hand must carry; else 1.

    Example:
        >>> loss_scale(None, torch.device("cpu"))
        1.0
    """
    if trainer is None:
        return 1.0
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return 1.0
    # scale() (not get_scale()) also initialises a fresh scaler, which unscale_ requires
    return float(scaler.scale(torch.ones((), device=device)))


def should_log_step(trainer: pl.Trainer | None, step_number: int) -> bool:
    """Whether the logger writes the step values of the batch that is step ``step_number``
    (so they are worth logging)."""
    return trainer is not None and logger_writes_step(trainer, step_number)


def shows_progress_bar(trainer: pl.Trainer | None) -> bool:
    """Whether a progress bar displays the step values."""
    return trainer is not None and trainer.progress_bar_callback is not None


def resumes_mid_epoch(trainer: pl.Trainer) -> bool:
    """Whether the training epoch starting now resumes one a checkpoint left unfinished (its
    progress counter holds some, not all, of its batches)."""
    done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    return 0 < done < trainer.num_training_batches
