"""`DataSummary`: what the run trains on, printed once when fitting starts (rank zero)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from mtl_lightning.losses import labelled_masks
from mtl_lightning.tasks import TaskSpec

__all__ = ["DataSummary", "describe_data"]

SPLITS = ("train", "val", "test")


def _labelled(dataset: Any, tasks: Sequence[TaskSpec]) -> dict[str, int] | None:
    targets = getattr(dataset, "targets", None)
    if not isinstance(targets, Mapping) or not all(
        isinstance(targets.get(t.name), Tensor) for t in tasks
    ):
        return None
    return {name: int(mask.sum()) for name, mask in labelled_masks(tasks, targets).items()}


def describe_data(datamodule: Any, tasks: Sequence[TaskSpec]) -> str:
    """Split sizes, then per task its kind, classes, chance and labelled samples per split
    (and, for recordings, speakers per split).

    Example:
        >>> import torch
        >>> from mtl_lightning.data import TensorTaskDataset
        >>> class D:
        ...     train_set = TensorTaskDataset(torch.zeros(4, 2), {"a": torch.tensor([0, 1, 1, -100])})
        ...     val_set = TensorTaskDataset(torch.zeros(2, 2), {"a": torch.tensor([0, 1])})
        >>> print(describe_data(D(), [TaskSpec("a", 2)]))
        Data (D): train 4, val 2 samples
        task  kind            classes  chance  labelled train/val
        a     classification        2   0.500  3/2
    """
    sets = {s: getattr(datamodule, f"{s}_set", None) for s in SPLITS}
    sets = {s: d for s, d in sets.items() if d is not None and hasattr(d, "__len__")}
    sizes = ", ".join(f"{s} {len(d)}" for s, d in sets.items())
    lines = [f"Data ({type(datamodule).__name__}): {sizes} samples"]
    counts = {s: _labelled(d, tasks) for s, d in sets.items()}
    width = max([4, *(len(t.name) for t in tasks)])
    header = f"{'task':<{width}}  kind            classes  chance  labelled {'/'.join(sets)}"
    lines.append(header)
    for t in tasks:
        classes = str(t.size) if t.is_classification else "-"
        chance = f"{t.chance:.3f}" if t.is_classification else "-"
        labelled = "/".join(
            str(c[t.name]) if c is not None else "?" for c in (counts[s] for s in sets)
        )
        lines.append(f"{t.name:<{width}}  {t.kind:<14}  {classes:>7}  {chance:>6}  {labelled}")
    speakers = {
        s: len({v for v in d.speakers if v is not None})
        for s, d in sets.items()
        if isinstance(getattr(d, "speakers", None), list)
    }
    if any(speakers.values()):  # known only where read (speaker-disjoint splits, per-speaker norm)
        lines.append("speakers: " + ", ".join(f"{s} {n}" for s, n in speakers.items()))
    return "\n".join(lines)


class DataSummary(pl.Callback):
    """Print :func:`describe_data` once when fitting starts, on rank zero (the CLI adds it)."""

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        tasks = getattr(pl_module, "tasks", None)
        if datamodule is None or not tasks:
            return
        print(describe_data(datamodule, tasks), flush=True)
