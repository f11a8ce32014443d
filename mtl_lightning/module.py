"""`MultiTaskModule`: a shared trunk, one head per task, per-task losses and metrics.

The module holds the model and the Lightning hooks; each hook guards and delegates to the
rooms of :mod:`mtl_lightning.training`: the per-stage metrics (``StageMetrics``), the summed-loss
path (``automatic_step``), the per-task-gradient path (``GradientStep``), the diagnostics.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from typing_extensions import override

from mtl_lightning.adversary import Adversary, AdversaryConfig
from mtl_lightning.adversary.config import adversary_configs
from mtl_lightning.adversary.metrics import AttackerMetrics
from mtl_lightning.adversary.steps import AdversarySteps
from mtl_lightning.callbacks.collective_order import log_replicated, place_metrics_sync
from mtl_lightning.losses import ClassWeights, labelled_masks, task_loss
from mtl_lightning.nn import CNNTrunk, GradientReversal
from mtl_lightning.nn.heads import decode, task_heads
from mtl_lightning.nonfinite import NonFiniteError, NonFiniteGuard, NonFinitePolicy
from mtl_lightning.optim import fused_on_cpu
from mtl_lightning.tasks import TaskSpec, validate_tasks
from mtl_lightning.training import trainer_adapters as adapters
from mtl_lightning.training.aggregated import GradientStep
from mtl_lightning.training.arguments import check_options, keep_plain_hparams
from mtl_lightning.training.automatic import (
    adversary_total,
    automatic_step,
    confusion_total,
    losses_after_step,
)
from mtl_lightning.training.checkpoint import save_global_states, split_global_states
from mtl_lightning.training.diagnostics import grad_cos_due, log_baselines, log_weights
from mtl_lightning.training.forward import forward_losses, head_outputs, inspect_trunk, trunk_output
from mtl_lightning.training.log_fast_path import install as install_log_fast_path
from mtl_lightning.training.losses import confusion_losses
from mtl_lightning.training.optimizers import param_groups, step_schedulers, with_scheduler
from mtl_lightning.training.progress import StepOutputs, StepState
from mtl_lightning.training.stage_metrics import StageMetrics
from mtl_lightning.weighting import StaticWeighting, WeightingStrategy

__all__ = ["MultiTaskModule", "NonFiniteError", "StepOutputs"]


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3)


def _overrides(strategy: WeightingStrategy, hook: str) -> bool:
    return getattr(type(strategy), hook) is not getattr(WeightingStrategy, hook)


class MultiTaskModule(AdversarySteps, NonFiniteGuard, pl.LightningModule):
    """A shared trunk feeding one head per task; adversarial heads sit behind gradient reversal.

    Every task is described by a :class:`~mtl_lightning.tasks.TaskSpec`; nothing here names a
    task. Batches are ``{"features": x, "targets": {task_name: labels}}``.

    Args:
        tasks: The tasks (linked from the datamodule by the CLI).
        trunk: Shared ``nn.Module`` exposing ``out_features``; default :class:`CNNTrunk`.
        head_hidden: Hidden width of each task's MLP head (0 for a linear head), unless its
            ``TaskSpec.head_hidden`` / ``head_depth`` say otherwise.
        optimizer: Callable building the optimizer from the parameters (default AdamW, lr 1e-3).
        lr_scheduler: Optional callable building a scheduler from the optimizer (stepped per epoch).
        grl_lambda: Initial gradient-reversal strength (a schedule callback usually sets it).
        validate_inputs: Check every batch against the tasks (labels in range, finite features).
        weighting: Turns per-task losses into the total and reports its weights (logged as
            ``train/weight/{task}``); default :class:`~mtl_lightning.weighting.StaticWeighting`,
            the plain sum with each ``TaskSpec.weight``. Gradient-based strategies
            (:class:`~mtl_lightning.weighting.GradientWeighting`) switch the module to manual
            optimisation: it computes the per-task gradients, averages them over DDP ranks,
            aggregates them and steps the optimizer itself.
        grad_cos_every_n_steps: Log the cosine between every two tasks' gradients of the
            trunk as ``train/grad_cos/{a}__{b}`` every this many steps (0: never; use a
            multiple of ``trainer.log_every_n_steps``, or the logger writes the latest value
            at its next step). Adversarial tasks enter with their reversed gradient.
        nonfinite: A NaN/inf task loss or gradient: ``"raise"`` a :class:`NonFiniteError`
            naming the task, step and batch; ``"skip"`` the step and count it
            (``train/skipped_steps``); ``"off"``: no check (saves a host sync per step).
        adversary_config: Give every adversarial task an ensemble of attackers trained to their best
            response, and a trunk objective against them
            (:class:`~mtl_lightning.adversary.AdversaryConfig`; the CLI's configs do). ``None``
            (the default here): each adversarial task has one head, trained jointly with the
            trunk behind gradient reversal (``TaskSpec.adversary``: ``reversal`` or
            ``confusion``; ``hsic`` always gets the ensemble) -- the classic set-up, whose head
            is easily fooled: judge it with a probe. With an ensemble,
            ``{stage}/{task}/acc|balanced_acc|f1|loss`` are the best attacker's (the worst
            case) and ``{stage}/{task}/attacker/{i}/balanced_acc`` each attacker's.
        adversaries: Per-task :class:`~mtl_lightning.adversary.AdversaryConfig` (by task
            name), overriding ``adversary_config`` for those tasks.

    Batches may mark missing labels with ``-100`` (classes) or NaN (regression): those
    samples are left out of that task's loss and metrics, and a batch with none gives the
    task a loss of exactly 0.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> m = MultiTaskModule([TaskSpec("emotion", 5), TaskSpec("speaker", 11, role="adversarial")])
        >>> {k: v.shape for k, v in m(torch.zeros(2, 1, 40, 64)).items()}
        {'emotion': torch.Size([2, 5]), 'speaker': torch.Size([2, 11])}
    """

    #: per stage and task: metrics, loss means, training-label counts (its modules are this
    #: module's children ``stage_metrics``, ``stage_losses``, ``train_class_counts``)
    _metrics: StageMetrics

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        trunk: nn.Module | None = None,
        head_hidden: int = 64,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        grl_lambda: float = 1.0,
        validate_inputs: bool = True,
        weighting: WeightingStrategy | None = None,
        grad_cos_every_n_steps: int = 0,
        nonfinite: NonFinitePolicy = "raise",
        adversary_config: AdversaryConfig | None = None,
        adversaries: dict[str, AdversaryConfig] | None = None,
    ) -> None:
        super().__init__()
        install_log_fast_path()  # Lightning#20388: self.log's per-call device walk
        self.tasks = validate_tasks(tasks)
        configs = adversary_configs(self.tasks, adversary_config, adversaries)
        # Under LightningCLI this records the config (class_path/init_args of the trunk and the
        # optimizer), so `MultiTaskModule.load_from_checkpoint(path)` rebuilds the same model.
        with warnings.catch_warnings():  # a live trunk module is dropped from hparams below
            warnings.filterwarnings("ignore", ".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        keep_plain_hparams(self.hparams, self.tasks, adversary_config, adversaries)
        self.trunk = trunk if trunk is not None else CNNTrunk()
        width, self._trunk_takes_mask = inspect_trunk(self.trunk, self.tasks)
        self._trunk_checked = False  # the output's shape is checked once, at the first batch
        self.reversal = GradientReversal(grl_lambda)
        # attacker ensembles (and erasers) of the adversarial tasks that have them
        self.adversaries = nn.ModuleDict(
            {t.name: Adversary(t, width, configs[t.name]) for t in self.tasks if t.name in configs}
        )
        self.heads = task_heads(self.tasks, width, head_hidden, skip=self.adversaries.keys())
        self.attacker_metrics = AttackerMetrics(
            {n: (a.task, a.num_attackers) for n, a in self.adversaries.items()}
        )
        # seeds the attackers' re-initialisation: the same on every rank, kept by checkpoints
        self.register_buffer("adversary_seed", torch.tensor(torch.initial_seed() % 2**31))
        # the training accumulators go into checkpoints, so a run resumed mid-epoch ends the
        # epoch with the same metrics (and DWA with the same epoch losses) as an uninterrupted one
        StageMetrics(self.tasks, ensembles=self.adversaries.keys()).adopt(self, "_metrics")
        for metric in self.attacker_metrics.stage_modules("train"):
            metric.persistent(True)
        # TaskSpec.class_weights as checkpointed buffers ("balanced": resolved at fit start)
        self.class_weights = ClassWeights(self.tasks)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.validate_inputs = validate_inputs
        # the default reproduces the plain sum with each TaskSpec's static weight
        self.weighting = weighting if weighting is not None else StaticWeighting()
        self.weighting.setup(self.tasks)
        # gradient methods compute, reduce and write the gradients themselves
        self.automatic_optimization = not self.weighting.uses_gradients
        check_options(grad_cos_every_n_steps, nonfinite)
        self.grad_cos_every_n_steps = grad_cos_every_n_steps
        self.nonfinite = nonfinite
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self._progress = StepState()

    # ------------------------------------------------------------------ model
    @property
    def grl_lambda(self) -> float:
        """Current gradient-reversal strength applied to adversarial heads."""
        return float(self.reversal.lambda_)

    @grl_lambda.setter
    def grl_lambda(self, value: float) -> None:
        self.reversal.set_lambda(value)

    @property
    def has_adversary(self) -> bool:
        """Whether any task is adversarial."""
        return any(t.adversarial for t in self.tasks)

    def embed(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """The shared representation the heads see: the trunk's output (given the padding
        ``mask`` of whole utterances, if any), through each adversary's eraser (if any)."""
        return self.erase(self.run_trunk(features, mask))

    def run_trunk(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """The trunk's output, its contract (``[batch, out_features]``) checked on the first
        call; a padding ``mask`` goes to trunks whose ``forward`` takes one
        (:func:`~mtl_lightning.training.forward.trunk_output`)."""
        takes, check = self._trunk_takes_mask, not self._trunk_checked
        raw = trunk_output(self.trunk, features, mask, takes_mask=takes, check=check)
        self._trunk_checked = True
        return raw

    def erase(self, embedding: Tensor) -> Tensor:
        """Apply every adversary's LEACE eraser (the identity for those without one)."""
        for adversary in self.adversaries.values():
            embedding = adversary(embedding)
        return embedding

    def forward_heads(self, embedding: Tensor) -> dict[str, Tensor]:
        """Apply every head. Reversal adversaries see the embedding through gradient reversal;
        confusion adversaries see it detached (their own loss trains only the head); an
        attacker ensemble answers with its best attacker's logits (detached)."""
        outputs = self._head_outputs(embedding)
        for name, adversary in self.adversaries.items():
            outputs[name] = adversary.logits(embedding)[int(adversary.best)]
        return {t.name: outputs[t.name] for t in self.tasks}

    def _head_outputs(self, embedding: Tensor) -> dict[str, Tensor]:
        """The outputs of the heads (every task but the attacker ensembles), each seeing its
        view of the embedding (:func:`~mtl_lightning.training.forward.head_outputs`)."""
        skip = self.adversaries.keys()
        return head_outputs(self.tasks, self.heads, embedding, self.reversal, skip)

    def confusion_losses(self, embedding: Tensor) -> dict[str, Tensor]:
        """For each confusion adversary: ``CE(frozen_head(embedding), uniform) - log K`` (>= 0)
        (:func:`mtl_lightning.training.losses.confusion_losses`): it trains only the trunk."""
        return confusion_losses(self.tasks, self.heads, embedding, self.adversaries.keys())

    @override
    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return self.forward_heads(self.embed(features))

    # ------------------------------------------------------------------ losses
    @staticmethod
    def task_loss(
        task: TaskSpec,
        output: Tensor,
        target: Tensor,
        mask: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> Tensor:
        """The task's loss over labelled samples (:func:`mtl_lightning.losses.task_loss`).

        Example:
            >>> t = TaskSpec("a", 3)
            >>> float(MultiTaskModule.task_loss(t, torch.zeros(2, 3), torch.tensor([-100, -100]),
            ...                                 torch.tensor([False, False])))
            0.0
        """
        return task_loss(task, output, target, mask, weight)

    def labelled_masks(self, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per task, which samples carry a usable label (missing and ``only_when`` applied)."""
        return labelled_masks(self.tasks, targets)

    def combine_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Total loss from the weighting strategy (default: static ``TaskSpec`` weights)."""
        return self.weighting(losses, self.tasks)

    def confusion_total(self, embedding: Tensor, stage: str, batch_size: int) -> Tensor | None:
        """``lambda * sum_k w_k confusion_k`` over the confusion heads (logged), or None."""
        return confusion_total(self, embedding, stage, batch_size)

    def adversary_total(self, step: StepOutputs, stage: str) -> Tensor | None:
        """The trunk objectives added to the total
        (:func:`~mtl_lightning.training.automatic.adversary_total`), or None."""
        return adversary_total(self, step, stage)

    # ------------------------------------------------------------------ steps
    def forward_losses(
        self, batch: Any, batch_idx: int, train_adversaries: bool = False
    ) -> StepOutputs:
        """Check the batch, run trunk and heads, and compute every task's loss
        (:func:`~mtl_lightning.training.forward.forward_losses`).

        With ``train_adversaries`` (a training step), the erasers accumulate this batch and
        the attackers take their best-response steps on it (after recording its logits)."""
        return forward_losses(self, batch, batch_idx, train_adversaries)

    def update_metrics(self, stage: str, step: StepOutputs, total: Tensor) -> None:
        """Update and log the stage's per-task metrics and losses (labelled samples only): the
        attacker ensembles' (logged at the epoch's end: the worst case), then the others' and
        the total (:meth:`StageMetrics.update <mtl_lightning.training.StageMetrics.update>`)."""
        for name, logits in step.attacker_logits.items():
            target, mask, objective = step.targets[name], step.masks[name], step.objectives[name]
            self._update_attacker_metrics(stage, name, logits, target, mask, objective)
        # the step value (train/loss_step) is computed and logged only where it is shown: on
        # the steps the logger writes, and on every step when a progress bar displays it
        step_value = stage == "train" and (self._should_log_step() or self._shows_progress_bar())
        self._metrics.update(stage, step, total, self.log, step_value)

    def shared_step(self, batch: Any, batch_idx: int, stage: str) -> Tensor | None:
        """Forward, per-task losses and metrics; returns the weighted total loss
        (:func:`~mtl_lightning.training.automatic.automatic_step`).

        In training, when a task loss is not finite and ``nonfinite="skip"``, returns a zero
        loss whose step changes no parameter (:meth:`_skipped_step_loss`).
        """
        return automatic_step(self, batch, batch_idx, stage)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            return self.shared_step(batch, batch_idx, "train")
        return self.aggregated_step(batch, batch_idx)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self.shared_step(batch, batch_idx, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self.shared_step(batch, batch_idx, "test")

    def aggregated_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """One manual-optimisation step of a :class:`~mtl_lightning.weighting.GradientWeighting`
        strategy (:class:`~mtl_lightning.training.aggregated.GradientStep`): per-task gradients
        averaged over DDP ranks *before* the strategy weights them, checked for non-finite
        values before its state sees them; the trunk gets ``sum_k w_k g_k`` plus the
        adversaries' reversed gradient, each head the gradient of its own loss."""
        step = self.forward_losses(batch, batch_idx, train_adversaries=True)
        self._progress.start_batch(batch, batch_idx)
        if self._nonfinite_losses(step.losses, batch_idx):
            return None
        return GradientStep(self, scale=self._loss_scale()).run(step)

    @override
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's step, then the weighting strategy's post-step hook (FAMO's update)."""
        super().optimizer_step(*args, **kwargs)
        self.weighting.after_optimizer_step(self._losses_after_step)

    def _losses_after_step(self) -> dict[str, Tensor]:
        """The last training batch's task losses again, with the parameters just updated
        (:func:`~mtl_lightning.training.automatic.losses_after_step`)."""
        return losses_after_step(self)

    # ------------------------------------------------------------------ trainer adapters
    # (:mod:`~mtl_lightning.training.trainer_adapters`; the rooms call them on their host)
    def _reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over DDP ranks (identity in one process)."""
        return adapters.reduce_sum(self._trainer, tensor)

    def _reduce_mean(self, tensor: Tensor) -> Tensor:
        """Mean over DDP ranks (identity in one process)."""
        return adapters.reduce_mean(self._trainer, tensor)

    def _loss_scale(self) -> float:
        """The AMP loss scale (16-mixed) that gradients written by hand must carry; else 1."""
        return adapters.loss_scale(self._trainer, self.device)

    def _should_log_step(self) -> bool:
        """Whether the logger writes this batch's step values (so they are worth logging)."""
        return adapters.should_log_step(self._trainer, self._progress.step_number)

    def _shows_progress_bar(self) -> bool:
        return adapters.shows_progress_bar(self._trainer)

    def _grad_cos_due(self) -> bool:
        """Whether this step logs the gradient cosines
        (:func:`~mtl_lightning.training.diagnostics.grad_cos_due`)."""
        step_number = self._progress.step_number
        return self._trainer is not None and grad_cos_due(self.grad_cos_every_n_steps, step_number)

    def _log_weights(self) -> None:
        if self._should_log_step():
            log_weights(self.log, self.weighting.last_weights)

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, dict[str, Tensor]]:
        """Per task: ``pred`` (class index, 0/1 per label, or regression output) and, for
        classes and labels, ``prob`` (:func:`mtl_lightning.nn.heads.decode`).

        A ``batch["mask"]`` (whole utterances padded per batch) goes to the trunk as in
        :meth:`forward_losses`, so predictions do not depend on the batch's padding."""
        features = batch["features"] if isinstance(batch, Mapping) else batch
        mask = batch.get("mask") if isinstance(batch, Mapping) else None
        outputs = self.forward_heads(self.embed(features, mask))
        return {task.name: decode(task, outputs[task.name]) for task in self.tasks}

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, stage: str) -> None:
        """Put :class:`~mtl_lightning.callbacks.EpochMetricsSync` before the progress bar: the
        bar computes the logged metrics (collectives) on rank zero only, and the epoch-end hooks
        below call collectives too, which must come in the same order on every rank."""
        if self._trainer is not None:
            place_metrics_sync(self.trainer)

    @override
    def on_fit_start(self) -> None:
        self.class_weights.resolve_from(self.trainer)  # "balanced": once, unless restored
        self.weighting.set_reducer(self._reduce_mean)
        self._metrics.start_fit()  # a fresh (or resumed) fit registers its metrics again

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning writes a batch's step metrics when (optimizer steps done + 1) is a multiple
        # of log_every_n_steps; decided here, before this batch's (manual) optimizer step
        self._progress.step_number = self.global_step + 1

    @override
    def on_train_epoch_start(self) -> None:
        # The training accumulators are checkpointed (exact mid-epoch resume). A checkpoint
        # written at the end of an epoch still holds that epoch's sums: clear them whenever an
        # epoch starts from its first batch (the progress counter still holds the last epoch's).
        self._metrics.start_epoch("train")
        self._progress.parameters = None  # the gradient path lists them again
        if not adapters.resumes_mid_epoch(self.trainer):
            self._metrics.reset_train()
            self._start_adversary_epoch()  # not again in a resumed epoch

    @override
    def on_train_epoch_end(self) -> None:
        self._metrics.register_resumed_train(self.log)  # no step ran in this process's epoch
        log_baselines(self, "train")
        self._log_attackers("train")
        self._end_adversary_epoch()
        # every rank skips the same steps (the decision is reduced), so the count is replicated
        log_replicated(self, "train/skipped_steps", self.skipped_steps.float())
        if _overrides(self.weighting, "on_train_epoch_end"):
            self.weighting.on_train_epoch_end(self._metrics.epoch_losses("train"))
        if not self.automatic_optimization:  # manual optimisation steps its schedulers itself
            step_schedulers(self.lr_schedulers())

    @override
    def on_validation_epoch_start(self) -> None:
        self.class_weights.resolve_from(self.trainer)  # a no-op once resolved or restored
        self._metrics.start_epoch("val")

    @override
    def on_test_epoch_start(self) -> None:
        self.class_weights.resolve_from(self.trainer)
        self._metrics.start_epoch("test")

    @override
    def on_validation_epoch_end(self) -> None:
        log_baselines(self, "val")
        self._log_attackers("val")
        if self.trainer.sanity_checking or not _overrides(self.weighting, "on_validation_end"):
            return
        self.weighting.on_validation_end(self._metrics.values("val"))

    @override
    def on_test_epoch_end(self) -> None:
        log_baselines(self, "test")
        self._log_attackers("test")

    # ------------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write the *global* training accumulators, summed over DDP ranks
        (:func:`~mtl_lightning.training.checkpoint.save_global_states`). Lightning calls this
        hook on every rank, so the all-reduce is safe."""
        if self._trainer is not None and self.trainer.world_size > 1:
            save_global_states(self, checkpoint, self._reduce_sum)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the saved global metric states on rank zero only, zeros on the other ranks
        (:func:`~mtl_lightning.training.checkpoint.split_global_states`).

        Called before the state dict is loaded. The states are summed across ranks when computed,
        so the loaded states add up to the saved global sums whatever the world size now (a DDP
        checkpoint resumed in one process, or the other way round).
        """
        if self.global_rank != 0:
            split_global_states(self, checkpoint)

    # ------------------------------------------------------------------ optim
    @override
    def configure_optimizers(self) -> Any:
        """The optimizer over the model's parameters (the attackers have their own), and a
        second group, with ``weight_decay=0``, for the weighting strategy's own parameters
        (uncertainty weighting's log-variances) when it has any. On the CPU, groups that leave
        the implementation to torch take its ``fused`` one for Adam and AdamW, ``foreach``
        otherwise (fewer dispatches: :func:`~mtl_lightning.optim.fused_on_cpu`)."""
        # the attackers have their own optimizer (their parameters never require gradients)
        attackers, strategy = self.adversaries.parameters(), self.weighting.parameters()
        groups = param_groups(self.parameters(), attackers, strategy)
        optimizer = fused_on_cpu(self.optimizer_factory(groups))
        for adversary in self.adversaries.values():
            adversary.set_base_lr(float(optimizer.param_groups[0]["lr"]))
        return with_scheduler(optimizer, self.scheduler_factory, self._trainer)
