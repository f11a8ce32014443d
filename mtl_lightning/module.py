"""`MultiTaskModule`: a shared trunk, one head per task, per-task losses and metrics."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from mtl_lightning.metrics import ClassCounts, majority_rate, task_metrics
from mtl_lightning.nn import CNNTrunk, GradientReversal, MLPHead
from mtl_lightning.tasks import TaskSpec, validate_tasks
from mtl_lightning.validation import check_batch, unpack_batch
from mtl_lightning.weighting import StaticWeighting, WeightingStrategy

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


class MultiTaskModule(pl.LightningModule):
    """A shared trunk feeding one head per task; adversarial heads sit behind gradient reversal.

    Every task is described by a :class:`~mtl_lightning.tasks.TaskSpec`; nothing here names a
    task. Batches are ``{"features": x, "targets": {task_name: labels}}``.

    Args:
        tasks: The tasks (linked from the datamodule by the CLI).
        trunk: Shared ``nn.Module`` exposing ``out_features``; default :class:`CNNTrunk`.
        head_hidden: Hidden width of each task's MLP head (0 for a linear head).
        optimizer: Callable building the optimizer from the parameters (default AdamW, lr 1e-3).
        lr_scheduler: Optional callable building a scheduler from the optimizer (stepped per epoch).
        grl_lambda: Initial gradient-reversal strength (a schedule callback usually sets it).
        validate_inputs: Check every batch against the tasks (labels in range, finite features).
        weighting: Turns per-task losses into the total and reports its weights (logged as
            ``train/weight/{task}``); default :class:`~mtl_lightning.weighting.StaticWeighting`,
            the plain sum with each ``TaskSpec.weight``.

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
    ) -> None:
        super().__init__()
        self.tasks = validate_tasks(tasks)
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
        self.trunk = trunk if trunk is not None else CNNTrunk()
        width = getattr(self.trunk, "out_features", None)
        if not isinstance(width, int):
            raise TypeError(
                f"trunk {type(self.trunk).__name__} must expose an integer `out_features` "
                "(the size of the shared embedding)"
            )
        self.reversal = GradientReversal(grl_lambda)
        self.heads = nn.ModuleDict(
            {t.name: MLPHead(width, t.size, head_hidden) for t in self.tasks}
        )
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
                    {**{t.name: MeanMetric() for t in self.tasks}, TOTAL_KEY: MeanMetric()}
                )
                for s in STAGES
            }
        )
        self.train_class_counts = nn.ModuleDict(
            {t.name: ClassCounts(t.size) for t in self.tasks if t.is_classification}
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.validate_inputs = validate_inputs
        # the default reproduces the plain sum with each TaskSpec's static weight
        self.weighting = weighting if weighting is not None else StaticWeighting()
        self.weighting.setup(self.tasks)

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

    def embed(self, features: Tensor) -> Tensor:
        """The shared representation."""
        return self.trunk(features)

    def forward_heads(self, embedding: Tensor) -> dict[str, Tensor]:
        """Apply every head. Reversal adversaries see the embedding through gradient reversal;
        confusion adversaries see it detached (their own loss trains only the head)."""
        reversed_embedding = self.reversal(embedding) if self.has_adversary else embedding
        outputs = {}
        for t in self.tasks:
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
            if t.adversarial and t.adversary == "confusion":
                head = self.heads[t.name]
                frozen = {k: v.detach() for k, v in head.named_parameters()}
                logits = torch.func.functional_call(head, frozen, (embedding,))
                losses[t.name] = uniform_cross_entropy(logits) - math.log(t.size)
        return losses

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return self.forward_heads(self.embed(features))

    # ------------------------------------------------------------------ losses
    @staticmethod
    def task_loss(task: TaskSpec, output: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy for classification, mean squared error for regression."""
        if task.is_classification:
            return F.cross_entropy(output, target.long())
        return F.mse_loss(output, target.reshape(output.shape).to(output.dtype))

    def combine_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Total loss from the weighting strategy (default: static ``TaskSpec`` weights)."""
        return self.weighting(losses, self.tasks)

    # ------------------------------------------------------------------ steps
    def shared_step(self, batch: Any, batch_idx: int, stage: str) -> Tensor:
        """Forward, per-task losses and metrics; returns the weighted total loss."""
        features, targets = unpack_batch(batch, batch_idx)
        if self.validate_inputs:
            check_batch(features, targets, self.tasks, batch_idx)
        embedding = self.embed(features)
        outputs = self.forward_heads(embedding)
        losses = {t.name: self.task_loss(t, outputs[t.name], targets[t.name]) for t in self.tasks}
        total = self.combine_losses(losses)
        if stage == "train":
            for name, weight in self.weighting.last_weights.items():
                self.log(f"train/weight/{name}", float(weight), on_step=True, on_epoch=False)
        confusion = self.confusion_losses(embedding)
        if confusion:
            weights = {t.name: t.weight for t in self.tasks}
            strength = self.reversal.lambda_.to(total.dtype)
            total = total + strength * sum(weights[n] * c for n, c in confusion.items())
            for name, value in confusion.items():
                self.log(
                    f"{stage}/{name}/confusion",
                    value.detach(),
                    on_step=False,
                    on_epoch=True,
                    sync_dist=True,
                    batch_size=features.shape[0],
                )
        batch_size = features.shape[0]
        for task in self.tasks:
            name, output, target = task.name, outputs[task.name], targets[task.name]
            # a batch-size-weighted torchmetrics mean: exact under DDP, whatever the shard sizes
            loss_metric = self.stage_losses[f"{stage}_losses"][name]
            loss_metric.update(losses[name].detach(), batch_size)
            self.log(f"{stage}/{name}/loss", loss_metric, on_step=False, on_epoch=True)
            collection = self.stage_metrics[f"{stage}_metrics"][name]
            if task.is_classification:
                collection.update(output.detach(), target)
                if stage == "train":
                    self.train_class_counts[name].update(target)
            else:
                collection.update(output.detach(), target.reshape(output.shape).to(output.dtype))
            for key, metric in collection.items():
                self.log(
                    f"{stage}/{name}/{key}",
                    metric,
                    on_step=False,
                    on_epoch=True,
                    batch_size=batch_size,
                )
        total_metric = self.stage_losses[f"{stage}_losses"][TOTAL_KEY]
        total_metric(total.detach(), batch_size)  # forward: updates and caches the step value
        self.log(
            f"{stage}/loss", total_metric, on_step=stage == "train", on_epoch=True, prog_bar=True
        )
        return total

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, batch_idx, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, batch_idx, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, dict[str, Tensor]]:
        """Per task: ``pred`` (class index or regression output) and, for classes, ``prob``."""
        features = batch["features"] if isinstance(batch, Mapping) else batch
        outputs = self(features)
        result: dict[str, dict[str, Tensor]] = {}
        for task in self.tasks:
            out = outputs[task.name]
            if task.is_classification:
                result[task.name] = {"pred": out.argmax(-1), "prob": out.softmax(-1)}
            else:
                result[task.name] = {"pred": out}
        return result

    # ------------------------------------------------------------------ baselines
    def _log_baselines(self, stage: str) -> None:
        for task in self.tasks:
            if not task.is_classification:
                continue
            self.log(f"{stage}/{task.name}/chance", task.chance, sync_dist=False)
            counts = self.train_class_counts[task.name].counts.clone()
            if self._trainer is not None:  # sum the training-label counts over DDP ranks
                counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
            majority = majority_rate(counts)
            if not torch.isnan(majority):
                self.log(f"{stage}/{task.name}/majority", float(majority), sync_dist=False)

    def on_train_epoch_end(self) -> None:
        self._log_baselines("train")

    def on_validation_epoch_end(self) -> None:
        self._log_baselines("val")

    def on_test_epoch_end(self) -> None:
        self._log_baselines("test")

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
