"""The summed-loss path (automatic optimisation, and every validation and test step): the
weighting strategy's total of the task losses, plus the adversaries' trunk objectives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mtl_lightning.training.diagnostics import log_grad_cos, task_gradients
from mtl_lightning.training.losses import scaled_objective
from mtl_lightning.training.progress import StepOutputs
from mtl_lightning.weighting.base import rerun_losses

if TYPE_CHECKING:
    from mtl_lightning.module import MultiTaskModule

__all__ = ["adversary_total", "automatic_step", "confusion_total", "losses_after_step"]


def automatic_step(host: MultiTaskModule, batch: Any, batch_idx: int, stage: str) -> Tensor | None:
    """Forward, per-task losses and metrics; returns the weighted total loss, which Lightning
    differentiates and steps on (training).

    In training, when a task loss is not finite and ``nonfinite="skip"``, returns a zero loss
    whose step changes no parameter (``NonFiniteGuard._skipped_step_loss``); on the steps it is
    due, the cosines between the tasks' gradients of the trunk are logged first.
    """
    training = stage == "train"
    step = host.forward_losses(batch, batch_idx, train_adversaries=training)
    if training:
        host._progress.start_batch(batch, batch_idx)
        if host._nonfinite_losses(step.losses, batch_idx):
            return host._skipped_step_loss()
        if host._grad_cos_due():
            log_grad_cos(host, task_gradients(host, step)[0])
    total = host.combine_losses(step.losses)
    if training:
        host._log_weights()
    confusion = host.adversary_total(step, stage)
    if confusion is not None:
        total = total + confusion
    host.update_metrics(stage, step, total)
    return total


def losses_after_step(host: MultiTaskModule) -> dict[str, Tensor]:
    """The last training batch's task losses again, with the parameters just updated, for the
    weighting strategy's post-step hook (FAMO's update): one extra forward pass, no gradients,
    the run's state left as it was (:func:`~mtl_lightning.weighting.base.rerun_losses`)."""
    progress = host._progress

    def losses() -> Mapping[str, Tensor]:
        return host.forward_losses(progress.last_batch, progress.batch_idx).losses

    return rerun_losses(losses, host, host.trainer.precision_plugin.forward_context())


def confusion_total(
    host: MultiTaskModule, embedding: Tensor, stage: str, batch_size: int
) -> Tensor | None:
    """``lambda * sum_k w_k confusion_k`` over the confusion heads (each logged as
    ``{stage}/{task}/confusion``), or None."""
    confusion = host.confusion_losses(embedding)
    if not confusion:
        return None
    _log_objectives(host, {f"{stage}/{n}/confusion": v for n, v in confusion.items()}, batch_size)
    return scaled_objective(host.tasks, confusion, host.reversal.lambda_.to(embedding.dtype))


def adversary_total(host: MultiTaskModule, step: StepOutputs, stage: str) -> Tensor | None:
    """The trunk objectives added to the total: :func:`confusion_total` plus, in training,
    ``lambda * sum_k w_k objective_k`` over the attacker ensembles (``val/loss`` and
    ``test/loss`` are the tasks' losses, the attackers' included); None when there is none.
    The objectives are logged as ``{stage}/{task}/objective`` at the epoch's end."""
    batch_size = step.features.shape[0]
    total = confusion_total(host, step.embedding, stage, batch_size)
    if not step.objectives:
        return total
    if stage != "train":  # logged at the epoch's end (AdversarySteps._log_attackers)
        return total
    strength = host.reversal.lambda_.to(step.embedding.dtype)
    ensembles = scaled_objective(host.tasks, step.objectives, strength)
    return ensembles if total is None else total + ensembles


def _log_objectives(host: MultiTaskModule, values: Mapping[str, Tensor], batch_size: int) -> None:
    for tag, value in values.items():
        host.log(
            tag, value.detach(), on_step=False, on_epoch=True, sync_dist=True,
            batch_size=batch_size,
        )  # fmt: skip
