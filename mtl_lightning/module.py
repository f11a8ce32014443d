"""`MultiTaskModule`: a shared trunk, one head per task, per-task losses and metrics."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric

from mtl_lightning.adversary import Adversary, AdversaryConfig
from mtl_lightning.adversary.config import adversary_configs, config_dict
from mtl_lightning.adversary.metrics import AttackerMetrics
from mtl_lightning.adversary.steps import AdversarySteps
from mtl_lightning.callbacks.collective_order import (
    log_replicated,
    place_metrics_sync,
)
from mtl_lightning.gradients import cosine_matrix, flat_grad, gram_matrix, write_grads
from mtl_lightning.log_cadence import logger_writes_step
from mtl_lightning.losses import ClassWeights, labelled_masks, task_loss
from mtl_lightning.metrics import (
    LossMean,
    task_baselines,
    task_metrics,
    training_counts,
    update_task_metrics,
)
from mtl_lightning.metrics.labelled import log_labelled_counts
from mtl_lightning.metrics.rank_states import sum_metric_states, zero_metric_states
from mtl_lightning.nn import CNNTrunk, GradientReversal
from mtl_lightning.nn.contract import (
    TrunkContractError,
    check_trunk_output,
    narrow_embedding_warning,
    takes_mask,
    trunk_width,
)
from mtl_lightning.nn.heads import decode, task_heads
from mtl_lightning.nonfinite import NonFiniteError, NonFiniteGuard, NonFinitePolicy
from mtl_lightning.optim import fit_schedule_to_run
from mtl_lightning.tasks import TaskSpec, validate_tasks
from mtl_lightning.validation import check_batch, unpack_batch
from mtl_lightning.weighting import GradientWeighting, StaticWeighting, WeightingStrategy
from mtl_lightning.weighting.base import rerun_losses

__all__ = ["MultiTaskModule", "NonFiniteError", "StepOutputs"]

#: the validation metric of each task kind that the progress bar shows
PROGRESS_METRIC = {"classification": "balanced_acc", "multilabel": "f1_macro", "regression": "mse"}


@dataclass
class StepOutputs:
    """What one forward pass produced: the inputs, the shared embedding (the trunk's output,
    before any eraser: every trunk gradient is taken there), heads and losses."""

    features: Tensor
    targets: Mapping[str, Tensor]
    masks: dict[str, Tensor]
    embedding: Tensor
    outputs: dict[str, Tensor]
    losses: dict[str, Tensor]
    #: per attacker-ensemble adversary: every attacker's (detached) logits, ``[M, B, K]``
    attacker_logits: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    #: per attacker-ensemble adversary: the trunk's objective (in the graph, lambda not applied)
    objectives: dict[str, Tensor] = dataclasses.field(default_factory=dict)


STAGES = ("train", "val", "test")


def uniform_cross_entropy(logits: Tensor) -> Tensor:
    """Mean cross-entropy between softmax(logits) and the uniform distribution over classes.

    Example:
        >>> import math
        >>> round(float(uniform_cross_entropy(torch.zeros(4, 5))), 4) == round(math.log(5), 4)
        True
    """
    return -torch.log_softmax(logits, dim=-1).mean(dim=-1).mean()


TOTAL_KEY = "_total"


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
        self.tasks = validate_tasks(tasks)
        configs = adversary_configs(self.tasks, adversary_config, adversaries)
        # Under LightningCLI this records the config (class_path/init_args of the trunk and the
        # optimizer), so `MultiTaskModule.load_from_checkpoint(path)` rebuilds the same model.
        with warnings.catch_warnings():  # a live trunk module is dropped from hparams below
            warnings.filterwarnings("ignore", ".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        # Outside the CLI these arguments are live objects; checkpoints keep only plain data so
        # they load with torch.load(weights_only=True). Pass them again to load_from_checkpoint.
        for key in ("trunk", "optimizer", "lr_scheduler", "weighting"):
            if not isinstance(self.hparams.get(key), (dict, str, type(None))):
                del self.hparams[key]
        # plain dicts, so checkpoints load with torch.load(weights_only=True)
        self.hparams["tasks"] = [t.to_dict() for t in self.tasks]
        self.hparams["adversary_config"] = config_dict(adversary_config)
        self.hparams["adversaries"] = (
            {k: config_dict(v) for k, v in adversaries.items()} if adversaries else None
        )
        self.trunk = trunk if trunk is not None else CNNTrunk()
        width = trunk_width(self.trunk)
        narrow = narrow_embedding_warning(width, self.tasks)
        if narrow:
            warnings.warn(narrow, stacklevel=2)
        self._trunk_takes_mask = takes_mask(self.trunk)
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
        # "train" is an nn.Module method, so stages are keyed "train_metrics", "val_metrics", ...
        self.stage_metrics = nn.ModuleDict(
            {
                f"{s}_metrics": nn.ModuleDict({t.name: task_metrics(t) for t in self.tasks})
                for s in STAGES
            }
        )
        self.stage_losses = nn.ModuleDict(
            {
                f"{s}_losses": nn.ModuleDict(
                    {**{t.name: LossMean() for t in self.tasks}, TOTAL_KEY: LossMean()}
                )
                for s in STAGES
            }
        )
        counts = {t.name: training_counts(t) for t in self.tasks}
        self.train_class_counts = nn.ModuleDict({n: c for n, c in counts.items() if c is not None})
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
        if grad_cos_every_n_steps < 0:
            raise ValueError(f"grad_cos_every_n_steps must be >= 0, got {grad_cos_every_n_steps}")
        if nonfinite not in ("raise", "skip", "off"):
            raise ValueError(f"nonfinite must be 'raise', 'skip' or 'off', got {nonfinite!r}")
        self.grad_cos_every_n_steps = grad_cos_every_n_steps
        self.nonfinite = nonfinite
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self._batch_idx = -1
        self._last_batch: Any = None  # kept for naming the task behind a non-finite gradient
        self._skip_step = False  # set by a skipped step; on_before_optimizer_step drops its grads
        self._step_number = 0  # 1-based number of the current training step (logging cadence)
        # stages whose metric objects are registered with self.log in the current epoch
        self._epoch_logged: set[str] = set()
        # training accumulators go into checkpoints, so a run resumed mid-epoch ends the epoch
        # with the same metrics (and DWA with the same epoch losses) as an uninterrupted one
        for holder in (self.stage_metrics["train_metrics"], self.stage_losses["train_losses"]):
            for module in holder.modules():
                if isinstance(module, Metric):
                    module.persistent(True)
        for metric in self.attacker_metrics.stage_modules("train"):
            metric.persistent(True)

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
        call; a padding ``mask`` goes to trunks whose ``forward`` takes one."""
        if mask is None:
            raw = self.trunk(features)
        elif self._trunk_takes_mask:
            raw = self.trunk(features, mask=mask)
        elif bool(mask.all()):  # nothing padded: the mask carries no information
            raw = self.trunk(features)
        else:
            raise TrunkContractError(
                f"trunk {type(self.trunk).__name__} takes no `mask`, but this batch pads "
                "variable-length inputs; give forward a `mask=None` keyword (True = real "
                "frame) or crop the inputs to a fixed length"
            )
        if not self._trunk_checked:
            check_trunk_output(self.trunk, features, raw)
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
        """The outputs of the heads (every task but the attacker ensembles)."""
        reversed_embedding = self.reversal(embedding) if self.has_adversary else embedding
        outputs = {}
        for t in self.tasks:
            if t.name in self.adversaries:
                continue
            if not t.adversarial:
                outputs[t.name] = self.heads[t.name](embedding)
            elif t.adversary == "confusion":
                outputs[t.name] = self.heads[t.name](embedding.detach())
            else:
                outputs[t.name] = self.heads[t.name](reversed_embedding)
        return outputs

    def confusion_losses(self, embedding: Tensor) -> dict[str, Tensor]:
        """For each confusion adversary: ``CE(frozen_head(embedding), uniform) - log K`` (>= 0).

        The head's parameters are detached, so this term trains only the trunk: it is smallest
        when the head cannot tell the classes apart from the embedding.
        """
        losses = {}
        for t in self.tasks:
            if t.adversarial and t.adversary == "confusion" and t.name not in self.adversaries:
                head = self.heads[t.name]
                frozen = {k: v.detach() for k, v in head.named_parameters()}
                logits = torch.func.functional_call(head, frozen, (embedding,))
                losses[t.name] = uniform_cross_entropy(logits) - math.log(t.size)
        return losses

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
        confusion = self.confusion_losses(embedding)
        if not confusion:
            return None
        self._log_objectives(
            {f"{stage}/{n}/confusion": v for n, v in confusion.items()}, batch_size
        )
        weights = {t.name: t.weight for t in self.tasks}
        strength = self.reversal.lambda_.to(embedding.dtype)
        return strength * sum(weights[n] * c for n, c in confusion.items())

    def adversary_total(self, step: StepOutputs, stage: str) -> Tensor | None:
        """The trunk objectives added to the total: :meth:`confusion_total` plus, in training,
        ``lambda * sum_k w_k objective_k`` over the attacker ensembles (``val/loss`` and
        ``test/loss`` are the tasks' losses, the attackers' included); None when there is none.
        The objectives are logged as ``{stage}/{task}/objective`` at the epoch's end."""
        batch_size = step.features.shape[0]
        total = self.confusion_total(step.embedding, stage, batch_size)
        if not step.objectives:
            return total
        if stage != "train":  # logged at the epoch's end (AdversarySteps._log_attackers)
            return total
        weights = {t.name: t.weight for t in self.tasks}
        strength = self.reversal.lambda_.to(step.embedding.dtype)
        ensembles = strength * sum(weights[n] * o for n, o in step.objectives.items())
        return ensembles if total is None else total + ensembles

    def _log_objectives(self, values: Mapping[str, Tensor], batch_size: int) -> None:
        for tag, value in values.items():
            self.log(
                tag, value.detach(), on_step=False, on_epoch=True, sync_dist=True,
                batch_size=batch_size,
            )  # fmt: skip

    # ------------------------------------------------------------------ steps
    def forward_losses(
        self, batch: Any, batch_idx: int, train_adversaries: bool = False
    ) -> StepOutputs:
        """Check the batch, run trunk and heads, and compute every task's loss.

        With ``train_adversaries`` (a training step), the erasers accumulate this batch and
        the attackers take their best-response steps on it (after recording its logits)."""
        features, targets = unpack_batch(batch, batch_idx)
        if self.validate_inputs:
            check_batch(features, targets, self.tasks, batch_idx)
        masks = self.labelled_masks(targets)
        mask = batch.get("mask") if isinstance(batch, Mapping) else None
        raw = self.run_trunk(features, mask)
        embedding, erased_inputs = self._erase_batch(raw, targets, masks, train_adversaries)
        outputs = self._head_outputs(embedding)
        attacker_logits, objectives = self._attack_batch(
            embedding, erased_inputs, targets, masks, outputs, train_adversaries
        )
        losses = {
            t.name: task_loss(
                t, outputs[t.name], targets[t.name], masks[t.name], self.class_weights.get(t.name)
            )
            for t in self.tasks
        }
        # the trunk's output: every trunk gradient (per task, on the manual path) is taken here
        return StepOutputs(
            features, targets, masks, raw, outputs, losses, attacker_logits, objectives
        )

    def update_metrics(self, stage: str, step: StepOutputs, total: Tensor) -> None:
        """Update and log the stage's per-task metrics and losses (labelled samples only).

        The epoch-level metric objects are handed to ``self.log`` once per epoch (Lightning
        computes and resets a logged torchmetrics object at the epoch's end, whatever the batch
        it was logged on); every ``self.log`` of a metric costs a ``Metric.to(device)``.
        """
        batch_size = step.features.shape[0]
        register = stage not in self._epoch_logged
        self._epoch_logged.add(stage)
        for task in self.tasks:
            name, output, target = task.name, step.outputs[task.name], step.targets[task.name]
            mask = step.masks[name]
            if name in step.attacker_logits:  # logged at the epoch's end: the worst case
                self._update_attacker_metrics(
                    stage, name, step.attacker_logits[name], target, mask, step.objectives[name]
                )
                continue
            labelled = int(mask.sum()) if not bool(mask.all()) else batch_size
            # a labelled-count-weighted torchmetrics mean: exact under DDP, whatever the shards
            loss_metric = self.stage_losses[f"{stage}_losses"][name]
            if labelled:
                loss_metric.update(step.losses[name].detach(), labelled)
            if register:
                self.log(f"{stage}/{name}/loss", loss_metric, on_step=False, on_epoch=True)
            collection = self.stage_metrics[f"{stage}_metrics"][name]
            if labelled < batch_size:
                output, target = output[mask], target[mask]
            if labelled:
                counted = stage == "train" and name in self.train_class_counts
                counts = self.train_class_counts[name] if counted else None
                update_task_metrics(task, collection, output, target, counts)
            shown = PROGRESS_METRIC[task.kind] if stage == "val" else None  # the headline
            for key, metric in collection.items() if register else ():
                self.log(
                    f"{stage}/{name}/{key}", metric, on_step=False, on_epoch=True,
                    prog_bar=key == shown,
                )  # fmt: skip
        total_metric = self.stage_losses[f"{stage}_losses"][TOTAL_KEY]
        on_step = stage == "train"
        # the step value (train/loss_step) is computed and logged only where it is shown: on
        # the steps the logger writes, and on every step when a progress bar displays it
        step_value = on_step and (self._should_log_step() or self._shows_progress_bar())
        if step_value:  # forward: updates and caches the step value that on_step logs
            total_metric(total.detach(), batch_size)
        else:
            total_metric.update(total.detach(), batch_size)
        if register or step_value:
            self.log(f"{stage}/loss", total_metric, on_step=on_step, on_epoch=True, prog_bar=True)

    def shared_step(self, batch: Any, batch_idx: int, stage: str) -> Tensor | None:
        """Forward, per-task losses and metrics; returns the weighted total loss.

        In training, when a task loss is not finite and ``nonfinite="skip"``, returns a zero
        loss whose step changes no parameter (:meth:`_skipped_step_loss`).
        """
        step = self.forward_losses(batch, batch_idx, train_adversaries=stage == "train")
        if stage == "train":
            self._batch_idx, self._last_batch = batch_idx, batch
            if self._nonfinite_losses(step.losses, batch_idx):
                return self._skipped_step_loss()
            if self._grad_cos_due():
                self._log_grad_cos(self._task_gradients(step)[0])
        total = self.combine_losses(step.losses)
        if stage == "train":
            self._log_weights()
        confusion = self.adversary_total(step, stage)
        if confusion is not None:
            total = total + confusion
        self.update_metrics(stage, step, total)
        return total

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            return self.shared_step(batch, batch_idx, "train")
        return self.aggregated_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self.shared_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self.shared_step(batch, batch_idx, "test")

    # ------------------------------------------------------------------ gradient methods
    def _reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over DDP ranks (identity in one process)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def _reduce_mean(self, tensor: Tensor) -> Tensor:
        """Mean over DDP ranks (identity in one process)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor, reduce_op="mean")

    def _loss_scale(self) -> float:
        """The AMP loss scale (16-mixed) that gradients written by hand must carry; else 1."""
        if self._trainer is None:
            return 1.0
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return 1.0
        # scale() (not get_scale()) also initialises a fresh scaler, which unscale_ requires
        return float(scaler.scale(torch.ones((), device=self.device)))

    def _aggregated_tasks(self) -> list[TaskSpec]:
        return [t for t in self.tasks if not t.adversarial and t.weight > 0]

    def _extra_objective(self, step: StepOutputs) -> Tensor | None:
        """The trunk objectives that are added after aggregation: adversaries (reversed)."""
        terms = [
            t.weight * step.losses[t.name]
            for t in self.tasks
            if t.adversarial
            and t.adversary == "reversal"
            and t.weight > 0
            and t.name not in self.adversaries
        ]
        confusion = self.adversary_total(step, "train")
        if confusion is not None:
            terms.append(confusion)
        return torch.stack(terms).sum() if terms else None

    def _task_gradients(
        self,
        step: StepOutputs,
        scale: float = 1.0,
        tasks: Sequence[TaskSpec] | None = None,
        of_params: bool = True,
    ) -> tuple[Tensor, list[Tensor], list[nn.Parameter]]:
        """Per-task gradients of the trunk's parameters (``[T, P]``, reduced over ranks and
        divided by ``scale``; ``[T, 0]`` with ``of_params=False``, which skips those backward
        passes), the per-task gradients of the embedding (local, still carrying ``scale``), and
        the trunk parameters, in order.

        Tasks (by default): the aggregated main tasks, then the adversaries: a reversal
        adversary with its reversed gradient, a confusion adversary with that of its
        ``lambda``-scaled confusion loss (the head sees a detached embedding, so its own loss
        has none)."""
        shared = [p for p in self.trunk.parameters() if p.requires_grad]
        if tasks is None:
            tasks = self._aggregated_tasks() + [t for t in self.tasks if t.adversarial]
        confusion = self.confusion_losses(step.embedding)
        strength = self.reversal.lambda_.to(step.embedding.dtype)

        def trunk_objective(t: TaskSpec) -> Tensor:
            if t.name in step.objectives:
                return strength * t.weight * step.objectives[t.name]
            if t.name in confusion:
                return strength * t.weight * confusion[t.name]
            return t.weight * step.losses[t.name]

        rep_rows = [
            torch.autograd.grad(scale * trunk_objective(t), step.embedding, retain_graph=True)[0]
            for t in tasks
        ]
        if not of_params or not rep_rows:
            return step.embedding.new_zeros(len(rep_rows), 0).float(), rep_rows, shared
        rows = torch.stack([flat_grad(step.embedding, shared, r) for r in rep_rows])
        return self._reduce_mean(rows.float()) / scale, rep_rows, shared

    def aggregated_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """One manual-optimisation step of a :class:`GradientWeighting` strategy.

        Per-task gradients (of the trunk's parameters or of the shared representation) are
        averaged over DDP ranks *before* the strategy weights them; the trunk gets
        ``sum_k w_k g_k`` plus the adversaries' reversed gradient, each head the gradient of
        its own (statically weighted) loss; then the optimizer steps. The losses handed to the
        strategy are rank means too: a task with no labelled sample on any rank arrives as
        exactly 0 on every rank, which the strategies read as absent (weight 0 or no update).

        Non-finite gradients never reach the strategy's state: the reduced Gramian (or
        Jacobian), losses and the heads' and adversaries' gradients are checked *before* the
        strategy is asked for weights, and a non-finite final update restores the state it had.
        Under a GradScaler (16-mixed) such a step goes to the scaler with infinite gradients,
        so it skips the step and lowers its scale; otherwise ``nonfinite`` applies (raise, or
        skip and count).
        """
        strategy = self.weighting
        assert isinstance(strategy, GradientWeighting)
        step = self.forward_losses(batch, batch_idx, train_adversaries=True)
        self._batch_idx, self._last_batch = batch_idx, batch
        if self._nonfinite_losses(step.losses, batch_idx):
            return None
        scale = self._loss_scale()
        # under a GradScaler overflow is routine: checked whatever the policy
        checking = self.nonfinite != "off" or scale != 1.0
        emb = step.embedding
        main = self._aggregated_tasks()
        adversaries = [t for t in self.tasks if t.adversarial]
        k = len(main)
        shared = [p for p in self.trunk.parameters() if p.requires_grad]
        shared_ids = {id(p) for p in shared}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in shared_ids]
        optimizer = self.optimizers()
        rep_rows = [
            torch.autograd.grad(scale * t.weight * step.losses[t.name], emb, retain_graph=True)[0]
            for t in main
        ]
        extra = self._extra_objective(step)
        extra_rep = (
            torch.autograd.grad(scale * extra, emb, retain_graph=True, allow_unused=True)[0]
            if extra is not None
            else None
        )
        head_total = torch.stack([t.weight * step.losses[t.name] for t in self.tasks]).sum()
        head_flat = flat_grad(scale * head_total, others) if others else emb.new_zeros(0)
        losses = torch.stack([step.losses[t.name].detach().float() for t in main])
        cos_due = self._grad_cos_due()
        cos_gramian: Tensor | None = None
        snapshot: dict[str, Tensor] | None = None

        def nonfinite_step(what: str) -> None:
            """A non-finite step: the strategy has not been (or is no longer) updated by it."""
            if scale != 1.0:  # the GradScaler must see the overflow to skip and back off
                for p in shared + others:
                    p.grad = torch.full_like(p, math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return None
            self._nonfinite_policy(what)
            return None

        def culprits(per_task: Tensor, heads_bad: bool, adversaries_bad: bool) -> str:
            values = per_task.tolist()
            bad = [t.name for t, v in zip(main, values, strict=True) if not math.isfinite(v)]
            parts = [f"gradient from task(s) {', '.join(map(repr, bad))}"] if bad else []
            if adversaries_bad:
                parts.append("adversaries' reversed gradient")
            if heads_bad:
                parts.append("gradient of the heads")
            return " and ".join(parts) or "per-task gradients (Gramian overflow)"

        with torch.autocast(device_type=emb.device.type, enabled=False):
            if strategy.level == "rep":
                rows = (
                    torch.stack(rep_rows).flatten(1).float() / scale
                    if k
                    else emb.new_zeros(0, emb.numel()).float()
                )
                local = rows @ rows.T
                # what the strategy does not see, flagged so every rank takes the same branch
                side = [head_flat, extra_rep if extra_rep is not None else emb.new_zeros(0)]
                flags = torch.stack([(~torch.isfinite(s)).any() for s in side]).float()
                packed = self._reduce_mean(torch.cat([local.flatten(), losses, flags]))
                # each rank's loss is its shard's mean: the global Gramian is sum_r G_r / R^2
                world = self.trainer.world_size if self._trainer is not None else 1
                gramian = packed[: k * k].view(k, k) / world
                losses_r = packed[k * k : k * k + k]
                flags_r = packed[k * k + k :]
                if checking and not bool(torch.isfinite(packed).all() & (flags_r == 0).all()):
                    per_task = gramian.diagonal() + losses_r
                    return nonfinite_step(
                        culprits(per_task, bool(flags_r[0] != 0), bool(flags_r[1] != 0))
                    )
                if checking:
                    snapshot = {n: v.clone() for n, v in strategy.state_dict().items()}
                weights = strategy.gramian_weights(gramian, losses_r) if k else losses_r
                rep_update = sum(
                    (w * r for w, r in zip(weights.to(emb.dtype), rep_rows, strict=True)),
                    torch.zeros_like(emb),
                )
                if extra_rep is not None:
                    rep_update = rep_update + extra_rep
                trunk_local = flat_grad(emb, shared, rep_update)
                reduced = self._reduce_mean(torch.cat([trunk_local.float(), head_flat.float()]))
                trunk_flat = reduced[: trunk_local.numel()]
                head_red = reduced[trunk_local.numel() :]
                if cos_due:  # representation-gradient cosines, adversaries included
                    if adversaries:
                        adv = self._task_gradients(step, scale, adversaries, of_params=False)[1]
                        rows = torch.cat([rows, torch.stack(adv).flatten(1).float() / scale])
                    cos_gramian = self._reduce_mean(rows @ rows.T)
            else:
                jac = (
                    torch.stack([flat_grad(emb, shared, r).float() for r in rep_rows])
                    if k
                    else emb.new_zeros(0, sum(p.numel() for p in shared))
                )
                extra_flat = (
                    flat_grad(emb, shared, extra_rep).float()
                    if extra_rep is not None
                    else jac.new_zeros(jac.shape[1])
                )
                parts = [jac.flatten(), losses, extra_flat, head_flat.float()]
                packed = self._reduce_mean(torch.cat(parts))
                sizes = [p.numel() for p in parts]
                jac_r, losses_r, extra_r, head_red = torch.split(packed, sizes)
                jac_r = jac_r.view(k, -1)
                gramian = (jac_r @ jac_r.T) / (scale * scale)
                if checking and not bool(
                    torch.isfinite(packed).all() & torch.isfinite(gramian).all()
                ):
                    per_task = jac_r.sum(1) + gramian.diagonal() + losses_r
                    return nonfinite_step(
                        culprits(
                            per_task,
                            not bool(torch.isfinite(head_red).all()),
                            not bool(torch.isfinite(extra_r).all()),
                        )
                    )
                if checking:
                    snapshot = {n: v.clone() for n, v in strategy.state_dict().items()}
                weights = (
                    strategy.gramian_weights(gramian, losses_r, jac_r / scale) if k else losses_r
                )
                trunk_flat = jac_r.T @ weights.to(jac_r) + extra_r
                if cos_due:  # cosines of the trunk-parameter gradients, adversaries included
                    rows = jac_r / scale
                    if adversaries:
                        rows = torch.cat([rows, self._task_gradients(step, scale, adversaries)[0]])
                    cos_gramian = rows @ rows.T
        if checking and not bool(torch.isfinite(trunk_flat).all() & torch.isfinite(head_red).all()):
            if snapshot is not None:  # the update is dropped: so is what the strategy learned
                strategy.load_state_dict(snapshot)
            return nonfinite_step(f"update of the parameters (strategy weights {weights.tolist()})")
        write_grads(shared, trunk_flat)
        if others:
            write_grads(others, head_red)
        if cos_gramian is not None:
            self._log_cosines([t.name for t in main + adversaries], cos_gramian)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        applied = dict(zip([t.name for t in main], weights.tolist(), strict=True))
        strategy.last_weights = {
            t.name: round(applied.get(t.name, 0.0 if not t.adversarial else 1.0) * t.weight, 6)
            for t in self.tasks
        }
        self._log_weights()
        # the objective whose gradient was applied: TaskSpec weights included, as in last_weights
        total = sum(
            (w * t.weight * step.losses[t.name] for w, t in zip(weights, main, strict=True)),
            emb.new_zeros(()),
        )
        if extra is not None:
            total = total + extra
        self.update_metrics("train", step, total.detach())
        return total.detach()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's step, then the weighting strategy's post-step hook (FAMO's update)."""
        super().optimizer_step(*args, **kwargs)
        self.weighting.after_optimizer_step(self._losses_after_step)

    def _losses_after_step(self) -> dict[str, Tensor]:
        """The last training batch's task losses again, with the parameters just updated."""

        def losses() -> Mapping[str, Tensor]:
            return self.forward_losses(self._last_batch, self._batch_idx).losses

        return rerun_losses(losses, self, self.trainer.precision_plugin.forward_context())

    # ------------------------------------------------------------------ diagnostics
    def _log_weights(self) -> None:
        if not self._should_log_step():
            return
        for name, weight in self.weighting.last_weights.items():
            self.log(f"train/weight/{name}", float(weight), on_step=True, on_epoch=False)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning writes a batch's step metrics when (optimizer steps done + 1) is a multiple
        # of log_every_n_steps; decided here, before this batch's (manual) optimizer step
        self._step_number = self.global_step + 1

    def _should_log_step(self) -> bool:
        """Whether the logger writes this batch's step values (so they are worth logging)."""
        return self._trainer is not None and logger_writes_step(self.trainer, self._step_number)

    def _shows_progress_bar(self) -> bool:
        return self._trainer is not None and self.trainer.progress_bar_callback is not None

    def _grad_cos_due(self) -> bool:
        """Every ``grad_cos_every_n_steps``-th step, counted as the logger counts steps, so that
        a multiple of ``log_every_n_steps`` is written at the step it was measured on."""
        n = self.grad_cos_every_n_steps
        return n > 0 and self._trainer is not None and self._step_number % n == 0

    def _log_grad_cos(self, rows: Tensor) -> None:
        names = [t.name for t in self._aggregated_tasks()] + [
            t.name for t in self.tasks if t.adversarial
        ]
        self._log_cosines(names, gram_matrix(rows))  # not in bf16 under bf16-mixed

    def _log_cosines(self, names: Sequence[str], gramian: Tensor) -> None:
        cos = cosine_matrix(gramian.float())
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                value = float(cos[i, j])
                if math.isfinite(value):  # a zero gradient (lambda = 0) has no direction
                    self.log(f"train/grad_cos/{a}__{names[j]}", value, on_step=True, on_epoch=False)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, dict[str, Tensor]]:
        """Per task: ``pred`` (class index, 0/1 per label, or regression output) and, for
        classes and labels, ``prob`` (:func:`mtl_lightning.nn.heads.decode`).

        A ``batch["mask"]`` (whole utterances padded per batch) goes to the trunk as in
        :meth:`forward_losses`, so predictions do not depend on the batch's padding."""
        features = batch["features"] if isinstance(batch, Mapping) else batch
        mask = batch.get("mask") if isinstance(batch, Mapping) else None
        outputs = self.forward_heads(self.embed(features, mask))
        return {task.name: decode(task, outputs[task.name]) for task in self.tasks}

    # ------------------------------------------------------------------ baselines
    def _log_baselines(self, stage: str) -> None:
        for task in self.tasks:  # the training-label counts are summed over DDP ranks
            held = task.name in self.train_class_counts
            counts = self.train_class_counts[task.name] if held else None
            for key, value in task_baselines(task, counts, self._reduce_sum).items():
                log_replicated(self, f"{stage}/{task.name}/{key}", value)
        log_labelled_counts(self, stage)  # {stage}/{task}/n, before the metrics reset

    def setup(self, stage: str) -> None:
        """Put :class:`~mtl_lightning.callbacks.EpochMetricsSync` before the progress bar: the
        bar computes the logged metrics (collectives) on rank zero only, and the epoch-end hooks
        below call collectives too, which must come in the same order on every rank."""
        if self._trainer is not None:
            place_metrics_sync(self.trainer)

    def on_fit_start(self) -> None:
        self.class_weights.resolve_from(self.trainer)  # "balanced": once, unless restored
        self.weighting.set_reducer(self._reduce_mean)
        self._epoch_logged.clear()  # a fresh (or resumed) fit registers its metrics again

    def on_train_epoch_start(self) -> None:
        # The training accumulators are checkpointed (exact mid-epoch resume). A checkpoint
        # written at the end of an epoch still holds that epoch's sums: clear them whenever an
        # epoch starts from its first batch (the progress counter still holds the last epoch's).
        self._epoch_logged.discard("train")
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if not 0 < done < self.trainer.num_training_batches:
            for holder in (self.stage_metrics["train_metrics"], self.stage_losses["train_losses"]):
                for module in holder.modules():
                    if isinstance(module, Metric):
                        module.reset()
            self._start_adversary_epoch()  # not again in a resumed epoch

    def _register_resumed_train_metrics(self) -> None:
        """Hand the training metric objects to ``self.log`` when this process ran no training
        step in the epoch (a run resumed from a checkpoint taken on the epoch's last batch), so
        the epoch's ``train/*`` values are logged under the same names as in an uninterrupted
        run (``train/loss_epoch``: the epoch half of the ``on_step`` and ``on_epoch`` total)."""
        if "train" in self._epoch_logged:
            return
        self._epoch_logged.add("train")
        for task in self.tasks:
            if task.name in self.adversaries:  # logged by _log_attackers
                continue
            name = task.name
            losses = self.stage_losses["train_losses"][name]
            self.log(f"train/{name}/loss", losses, on_step=False, on_epoch=True)
            for key, metric in self.stage_metrics["train_metrics"][name].items():
                self.log(f"train/{name}/{key}", metric, on_step=False, on_epoch=True)
        total = self.stage_losses["train_losses"][TOTAL_KEY]
        self.log("train/loss_epoch", total, on_step=False, on_epoch=True, prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self._register_resumed_train_metrics()
        self._log_baselines("train")
        self._log_attackers("train")
        self._end_adversary_epoch()
        # every rank skips the same steps (the decision is reduced), so the count is replicated
        log_replicated(self, "train/skipped_steps", self.skipped_steps.float())
        if _overrides(self.weighting, "on_train_epoch_end"):
            losses = self.stage_losses["train_losses"]
            self.weighting.on_train_epoch_end(
                {
                    t.name: float(losses[t.name].compute())
                    for t in self.tasks
                    if t.name not in self.adversaries
                }
            )
        if not self.automatic_optimization:  # manual optimisation steps its schedulers itself
            schedulers = self.lr_schedulers()
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                if scheduler is not None:
                    scheduler.step()

    def on_validation_epoch_start(self) -> None:
        self.class_weights.resolve_from(self.trainer)  # a no-op once resolved or restored
        self._epoch_logged.discard("val")

    def on_test_epoch_start(self) -> None:
        self.class_weights.resolve_from(self.trainer)
        self._epoch_logged.discard("test")

    def on_validation_epoch_end(self) -> None:
        self._log_baselines("val")
        self._log_attackers("val")
        if self.trainer.sanity_checking or not _overrides(self.weighting, "on_validation_end"):
            return
        values: dict[str, dict[str, float]] = {}
        for task in self.tasks:
            if task.name in self.adversaries:
                continue
            collection = self.stage_metrics["val_metrics"][task.name]
            values[task.name] = {k: float(m.compute()) for k, m in collection.items()}
            values[task.name]["loss"] = float(self.stage_losses["val_losses"][task.name].compute())
        self.weighting.on_validation_end(values)

    def on_test_epoch_end(self) -> None:
        self._log_baselines("test")
        self._log_attackers("test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write the *global* training accumulators: each checkpointed metric state summed over
        DDP ranks (:mod:`mtl_lightning.metrics.rank_states`). Lightning calls this hook on every
        rank, so the all-reduce is safe."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return
        strategy = self.trainer.strategy
        sum_metric_states(
            self, checkpoint["state_dict"], lambda t: strategy.reduce(t, reduce_op="sum")
        )
        self._sum_eraser_statistics(checkpoint["state_dict"], self._reduce_sum)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the saved global metric states on rank zero only, zeros on the other ranks.

        Called before the state dict is loaded. The states are summed across ranks when computed,
        so the loaded states add up to the saved global sums whatever the world size now (a DDP
        checkpoint resumed in one process, or the other way round).
        """
        if self.global_rank != 0:
            zero_metric_states(self, checkpoint["state_dict"])
            self._sum_eraser_statistics(checkpoint["state_dict"], torch.zeros_like)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> Any:
        """The optimizer over the model's parameters (the attackers have their own), and a
        second group, with ``weight_decay=0``, for the weighting strategy's own parameters
        (uncertainty weighting's log-variances) when it has any."""
        # the attackers have their own optimizer (their parameters never require gradients)
        attackers = {id(p) for p in self.adversaries.parameters()}
        strategy = list(self.weighting.parameters())
        skip = attackers | {id(p) for p in strategy}
        model = [p for p in self.parameters() if id(p) not in skip]
        groups: list[dict[str, Any]] = [{"params": model}]
        if strategy:
            groups.append({"params": strategy, "weight_decay": 0.0})
        optimizer = self.optimizer_factory(groups)
        for adversary in self.adversaries.values():
            adversary.set_base_lr(float(optimizer.param_groups[0]["lr"]))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        trainer = self._trainer  # None outside a Trainer: a given T_max is needed then
        fit_schedule_to_run(scheduler, trainer.max_epochs if trainer is not None else None)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
