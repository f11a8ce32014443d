"""`StageMetrics`: per stage and per task, the metric collection and the loss means; the
training-label counts behind the baselines."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from mtl_lightning.metrics import LossMean, task_metrics, training_counts, update_task_metrics
from mtl_lightning.metrics.fused import (
    CountLayout,
    add_loss_means,
    add_to_states,
    batch_mean,
    classification_counts,
)
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.training.progress import StepOutputs

__all__ = ["PROGRESS_METRIC", "STAGES", "TOTAL_KEY", "StageMetrics"]

#: the validation metric of each task kind that the progress bar shows
PROGRESS_METRIC = {"classification": "balanced_acc", "multilabel": "f1_macro", "regression": "mse"}
STAGES = ("train", "val", "test")
#: the key of a stage's total-loss mean beside its tasks' loss means
TOTAL_KEY = "_total"

#: ``LightningModule.log``
LogFn = Callable[..., Any]


class _StagePlan(NamedTuple):
    """What a stage's batch updates: the measured tasks (classification first), the
    classification ones, the loss means (the tasks', then the total's), the confusion-matrix
    (and, ``counted``, training-label count) states."""

    tasks: list[TaskSpec]
    classification: list[TaskSpec]
    losses: list[LossMean]
    states: list[tuple[Metric, str]]
    counted: bool


class StageMetrics(nn.Module):
    """Per stage (``train``, ``val``, ``test``) and per task: the task's torchmetrics collection
    (``acc``, ``balanced_acc``, ``f1``, ... by kind) and its loss mean weighted by labelled
    samples; the stage's total-loss mean; the training-label counts of the baselines.

    The modules are ``stage_metrics.{stage}_metrics.{task}``, ``stage_losses.{stage}_losses.
    {task | _total}`` and ``train_class_counts.{task}`` (``train`` is an ``nn.Module`` method,
    hence the suffixes), the names a :class:`~mtl_lightning.MultiTaskModule` checkpoint has
    always had: :meth:`adopt` registers them as the host's own children. The training
    accumulators are checkpointed, so a run resumed mid-epoch ends the epoch with the same
    metrics as an uninterrupted one.

    The tasks in ``ensembles`` (attacker ensembles) keep their modules here but are neither
    updated nor logged: :class:`~mtl_lightning.adversary.metrics.AttackerMetrics` measures them.

    Example:
        >>> import torch
        >>> from mtl_lightning.training.progress import StepOutputs
        >>> metrics = StageMetrics([TaskSpec("a", 2)])
        >>> step = StepOutputs(torch.zeros(2, 1), {"a": torch.tensor([0, 1])},
        ...                    {"a": torch.tensor([True, False])}, torch.zeros(2, 1),
        ...                    {"a": torch.tensor([[2.0, 0.0], [0.0, 2.0]])},
        ...                    {"a": torch.tensor(0.5)})
        >>> metrics.update("val", step, torch.tensor(0.5), log=lambda *a, **k: None)
        >>> metrics.values("val")["a"]["acc"], metrics.epoch_losses("val")
        (1.0, {'a': 0.5})
    """

    def __init__(self, tasks: Sequence[TaskSpec], ensembles: Collection[str] = ()) -> None:
        super().__init__()
        # the host's own list: its "balanced" specs are replaced once their weights are resolved
        self.tasks = tasks
        self.ensembles = frozenset(ensembles)
        self.stage_metrics = nn.ModuleDict(
            {
                f"{s}_metrics": nn.ModuleDict({t.name: task_metrics(t) for t in tasks})
                for s in STAGES
            }
        )
        self.stage_losses = nn.ModuleDict(
            {
                f"{s}_losses": nn.ModuleDict(
                    {**{t.name: LossMean() for t in tasks}, TOTAL_KEY: LossMean()}
                )
                for s in STAGES
            }
        )
        counts = {t.name: training_counts(t) for t in tasks}
        self.train_class_counts = nn.ModuleDict({n: c for n, c in counts.items() if c is not None})
        # stages whose metric objects are registered with `log` in the current epoch
        self._registered: set[str] = set()
        # per (device, class counts, with label counts): where the classification tasks'
        # counts lie in one bincount; per (stage, task names): what a batch updates
        self._layouts: dict[tuple[Any, ...], CountLayout] = {}
        self._plans: dict[tuple[Any, ...], _StagePlan] = {}
        self._true_row: Tensor | None = None
        for metric in self._train_accumulators():
            metric.persistent(True)

    def adopt(self, host: nn.Module, attribute: str = "_metrics") -> None:
        """Register these modules as ``host``'s own children, under their checkpoint names, and
        keep this holder as ``host.<attribute>`` outside ``host``'s modules, so that every state
        appears once in its state dict (and Lightning finds each logged metric by that name)."""
        for name, child in self.named_children():
            host.add_module(name, child)
        object.__setattr__(host, attribute, self)

    # ------------------------------------------------------------------ per batch
    def update(
        self, stage: str, step: StepOutputs, total: Tensor, log: LogFn, step_value: bool = False
    ) -> None:
        """Update the stage's per-task metrics and losses (labelled samples only) and its total.

        The epoch-level metric objects are handed to ``log`` once per epoch (Lightning computes
        and resets a logged torchmetrics object at the epoch's end, whatever the batch it was
        logged on); every ``log`` of a metric costs a ``Metric.to(device)``. ``step_value``
        (training): also compute the total's step value and log it (``train/loss_step``).
        """
        batch_size = step.features.shape[0]
        register = stage not in self._registered
        self._registered.add(stage)
        plan = self._plan(stage)
        tasks, total_metric = plan.tasks, plan.losses[-1]
        # the tasks' mean losses, weighted by their labelled samples, and the total, weighted
        # by the batch size (a row of the masks that is all True; on the device: no host copy)
        masks = torch.stack([*(step.masks[t.name] for t in tasks), self._all_true(step)])
        mean_losses = step.mean_losses
        losses = torch.stack([*(mean_losses[t.name] for t in tasks), total.reshape(())]).detach()
        fused = self._update_losses(plan.losses, losses, masks.sum(dim=1), step_value)
        if step_value and fused:  # the step value that on_step logs, as ``forward`` gives it
            total_metric.__dict__["_forward_cache"] = batch_mean(losses[-1], batch_size,
                                                                total_metric)  # fmt: skip
        if plan.classification:
            self._update_confusions(plan, step, masks)
        for task in tasks[len(plan.classification) :]:
            self._update_task(stage, task, step, batch_size)
        if register:
            for task in tasks:
                self._register(stage, task, log)
        if register or step_value:
            on_step = stage == "train"
            log(f"{stage}/loss", total_metric, on_step=on_step, on_epoch=True, prog_bar=True)

    def _all_true(self, step: StepOutputs) -> Tensor:
        """``[N]`` True for the batch's ``N`` samples on its device (kept while they stay)."""
        like = step.features
        cached = self._true_row
        if cached is None or cached.shape[0] != like.shape[0] or cached.device != like.device:
            cached = self._true_row = torch.ones(
                like.shape[0], dtype=torch.bool, device=like.device
            )
        return cached

    def _plan(self, stage: str) -> _StagePlan:
        """The stage's measured tasks, classification first, and the metrics a batch updates
        (built once per stage and list of tasks)."""
        key = (stage, tuple(t.name for t in self.tasks))
        plan = self._plans.get(key)
        if plan is None:
            measured = [t for t in self.tasks if t.name not in self.ensembles]
            classification = [t for t in measured if t.is_classification]
            tasks = classification + [t for t in measured if not t.is_classification]
            means = self.stage_losses[f"{stage}_losses"]
            collections = self.stage_metrics[f"{stage}_metrics"]
            counted = stage == "train" and all(
                t.name in self.train_class_counts for t in classification
            )
            states = [(collections[t.name]["acc"], "confmat") for t in classification]
            if counted:
                states += [(self.train_class_counts[t.name], "counts") for t in classification]
            losses = [means[t.name] for t in tasks] + [means[TOTAL_KEY]]
            plan = self._plans[key] = _StagePlan(tasks, classification, losses, states, counted)
        return plan

    @staticmethod
    def _update_losses(
        metrics: Sequence[LossMean], losses: Tensor, weights: Tensor, step_value: bool
    ) -> bool:
        """Add each mean loss, weighted by its labelled samples (the total, last: by the batch
        size), to its loss mean: all at once (:func:`~mtl_lightning.metrics.fused.add_loss_means`,
        returning True), or one by one where a loss is not finite (``MeanMetric`` warns and
        leaves it out), the total then by ``forward`` when ``step_value``."""
        if add_loss_means(metrics, losses, weights):
            return True
        for metric, loss, count in zip(metrics, losses, weights.tolist(), strict=True):
            if metric is metrics[-1] and step_value:
                metric(loss, count)  # updates and caches the step value that on_step logs
            elif count:
                metric.update(loss, count)
        return False

    def _update_confusions(self, plan: _StagePlan, step: StepOutputs, masks: Tensor) -> None:
        """The classification tasks' confusion matrices (and, in training, their label counts)
        from one ``bincount`` (:func:`~mtl_lightning.metrics.fused.classification_counts`)."""
        tasks = plan.classification
        outputs = [step.outputs[t.name] for t in tasks]
        key = (outputs[0].device, tuple(t.size for t in tasks), plan.counted)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = CountLayout.build(key[1], plan.counted, key[0])
        targets = [step.targets[t.name] for t in tasks]
        confusions, labels = classification_counts(layout, outputs, targets, masks[: len(tasks)])
        add_to_states(plan.states, confusions + labels)

    def _update_task(self, stage: str, task: TaskSpec, step: StepOutputs, batch_size: int) -> None:
        """A regression or multilabel task's metrics (its labelled samples)."""
        name, output, target = task.name, step.outputs[task.name], step.targets[task.name]
        mask = step.masks[name]
        labelled = int(mask.sum()) if not bool(mask.all()) else batch_size
        if labelled < batch_size:
            output, target = output[mask], target[mask]
        if labelled:
            counted = stage == "train" and name in self.train_class_counts
            counts = self.train_class_counts[name] if counted else None
            update_task_metrics(task, self.stage_metrics[f"{stage}_metrics"][name], output,
                                target, counts)  # fmt: skip

    def _register(self, stage: str, task: TaskSpec, log: LogFn) -> None:
        """Hand the task's loss mean and metric objects to ``log`` (once per epoch)."""
        name = task.name
        log(f"{stage}/{name}/loss", self.stage_losses[f"{stage}_losses"][name], on_step=False,
            on_epoch=True)  # fmt: skip
        shown = PROGRESS_METRIC[task.kind] if stage == "val" else None  # the headline
        for key, metric in self.stage_metrics[f"{stage}_metrics"][name].items():
            log(
                f"{stage}/{name}/{key}", metric, on_step=False, on_epoch=True,
                prog_bar=key == shown,
            )  # fmt: skip

    # ------------------------------------------------------------------ per epoch
    def start_fit(self) -> None:
        """A fresh (or resumed) fit registers its metrics again."""
        self._registered.clear()

    def start_epoch(self, stage: str) -> None:
        """The stage's metric objects are to be handed to ``log`` again."""
        self._registered.discard(stage)

    def reset_train(self) -> None:
        """Clear the training accumulators (not the training-label counts)."""
        for metric in self._train_accumulators():
            metric.reset()

    def register_resumed_train(self, log: LogFn) -> None:
        """Hand the training metric objects to ``log`` when this process ran no training step
        in the epoch (a run resumed from a checkpoint taken on the epoch's last batch), so the
        epoch's ``train/*`` values are logged under the same names as in an uninterrupted run
        (``train/loss_epoch``: the epoch half of the ``on_step`` and ``on_epoch`` total)."""
        if "train" in self._registered:
            return
        self._registered.add("train")
        for task in self.tasks:
            if task.name in self.ensembles:  # logged by the host's _log_attackers
                continue
            name = task.name
            losses = self.stage_losses["train_losses"][name]
            log(f"train/{name}/loss", losses, on_step=False, on_epoch=True)
            for key, metric in self.stage_metrics["train_metrics"][name].items():
                log(f"train/{name}/{key}", metric, on_step=False, on_epoch=True)
        total = self.stage_losses["train_losses"][TOTAL_KEY]
        log("train/loss_epoch", total, on_step=False, on_epoch=True, prog_bar=True)

    def epoch_losses(self, stage: str) -> dict[str, float]:
        """Per task (but the ensembles): the stage's epoch-mean loss, reduced over DDP ranks."""
        losses = self.stage_losses[f"{stage}_losses"]
        return {t.name: float(losses[t.name].compute()) for t in self.tasks if self._measured(t)}

    def values(self, stage: str) -> dict[str, dict[str, float]]:
        """``{task: {metric: value, "loss": value}}`` of the stage's epoch (but the ensembles),
        reduced over DDP ranks."""
        values: dict[str, dict[str, float]] = {}
        for task in self.tasks:
            if not self._measured(task):
                continue
            collection = self.stage_metrics[f"{stage}_metrics"][task.name]
            values[task.name] = {k: float(m.compute()) for k, m in collection.items()}
            loss = self.stage_losses[f"{stage}_losses"][task.name]
            values[task.name]["loss"] = float(loss.compute())
        return values

    def _measured(self, task: TaskSpec) -> bool:
        return task.name not in self.ensembles

    def _train_accumulators(self) -> Iterator[Metric]:
        for holder in (self.stage_metrics["train_metrics"], self.stage_losses["train_losses"]):
            for module in holder.modules():
                if isinstance(module, Metric):
                    yield module
