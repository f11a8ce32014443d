"""`AttackerMetrics`: each attacker's epoch metrics, and the worst case (the best attacker)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from mtl_lightning.metrics import LossMean, confusion_counts, task_metrics
from mtl_lightning.tasks import TaskSpec

STAGES = ("train", "val", "test")
_KEYS = [f"{s}_stage" for s in STAGES]  # "train" is an nn.Module method: not a key


@contextlib.contextmanager
def _resumed() -> Iterator[None]:
    """Silence torchmetrics' "compute before update": a run resumed from a checkpoint holds the
    restored states but counts no update in this process."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*was called before the ``update`` method.*")
        yield


class AttackerMetrics(nn.Module):
    """Per stage, per adversarial task and per attacker: ``acc``, ``balanced_acc``, ``f1`` (one
    confusion matrix each) and the cross-entropy mean; torchmetrics states, so DDP sums them.

    :meth:`compute` returns every attacker's values and the index of the best one (highest
    balanced accuracy): an adversary is judged by its strongest attacker.

    Example:
        >>> m = AttackerMetrics({"spk": (TaskSpec("spk", 2, role="adversarial"), 2)})
        >>> logits = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
        >>> m.update("val", "spk", logits, torch.tensor([0, 1]), torch.tensor([0.7, 0.3]))
        >>> values, best = m.compute("val", "spk")
        >>> best, values[best]["balanced_acc"], values[0]["balanced_acc"]
        (1, 1.0, 0.5)
    """

    def __init__(self, adversaries: Mapping[str, tuple[TaskSpec, int]]) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        name: nn.ModuleList(task_metrics(task) for _ in range(m))
                        for name, (task, m) in adversaries.items()
                    }
                )
                for stage in _KEYS
            }
        )
        self.losses = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        name: nn.ModuleList(LossMean() for _ in range(m))
                        for name, (task, m) in adversaries.items()
                    }
                )
                for stage in _KEYS
            }
        )
        # the trunk's objective, a batch-size-weighted mean (checkpointed like the rest)
        self.objectives = nn.ModuleDict(
            {stage: nn.ModuleDict({name: LossMean() for name in adversaries}) for stage in _KEYS}
        )
        self.sizes = {name: task.size for name, (task, _) in adversaries.items()}

    def stage_modules(self, stage: str) -> list[Metric]:
        """Every metric object of a stage (to reset, or to make persistent)."""
        key = f"{stage}_stage"
        holders = [self.metrics[key], self.losses[key], self.objectives[key]]
        return [m for h in holders for m in h.modules() if isinstance(m, Metric)]

    def update(self, stage: str, name: str, logits: Tensor, target: Tensor, losses: Tensor) -> None:
        """Add a batch: ``logits`` ``[M, n, K]`` and ``target`` ``[n]`` of the labelled samples,
        ``losses`` ``[M]`` each attacker's mean cross-entropy on them."""
        n = target.shape[0]
        if n == 0:
            return
        for i, collection in enumerate(self.metrics[f"{stage}_stage"][name]):
            counts = confusion_counts(logits[i], target, self.sizes[name])
            for metric in collection.values():
                metric.update(counts=counts)
            self.losses[f"{stage}_stage"][name][i].update(losses[i].detach(), n)

    def update_objective(self, stage: str, name: str, value: Tensor, batch_size: int) -> None:
        """Add a batch's trunk objective (weighted by the batch size)."""
        self.objectives[f"{stage}_stage"][name].update(value.detach().float(), batch_size)

    def objective(self, stage: str, name: str) -> float:
        """The stage's mean trunk objective (NaN when none was added)."""
        with _resumed():
            return float(self.objectives[f"{stage}_stage"][name].compute())

    def compute(self, stage: str, name: str) -> tuple[list[dict[str, float]], int]:
        """Every attacker's ``acc``, ``balanced_acc``, ``f1`` and ``loss`` (NaN with no sample)
        and the index of the best attacker (0 when none has a value)."""
        with _resumed():
            return self._compute(stage, name)

    def _compute(self, stage: str, name: str) -> tuple[list[dict[str, float]], int]:
        values = []
        for collection, loss in zip(
            self.metrics[f"{stage}_stage"][name], self.losses[f"{stage}_stage"][name], strict=True
        ):
            row = {k: float(m.compute()) for k, m in collection.items()}
            row["loss"] = float(loss.compute())
            values.append(row)
        scores = torch.tensor([v["balanced_acc"] for v in values])
        best = int(torch.nan_to_num(scores, nan=-1.0).argmax())
        return values, best

    def reset(self, stage: str) -> None:
        """Reset a stage's metrics (they are not handed to ``self.log``, so Lightning does not)."""
        for m in self.stage_modules(stage):
            m.reset()
