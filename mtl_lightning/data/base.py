"""`MultiTaskDataModule`: a LightningDataModule that declares its tasks."""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtl_lightning.tasks import TaskSpec


class MultiTaskDataModule(pl.LightningDataModule):
    """Base for datamodules whose ``tasks`` the CLI links into the model (tasks are declared once).

    Subclasses set ``self._tasks`` (or override :attr:`tasks`) and yield batches of the form
    ``{"features": Tensor, "targets": {task_name: Tensor}}``.
    """

    _tasks: list[TaskSpec]

    @property
    def tasks(self) -> list[TaskSpec]:
        """The tasks this data provides labels for."""
        return list(self._tasks)

    @staticmethod
    def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
        """A validation/test loader that sees every sample exactly once, also under DDP.

        Lightning's default distributed sampler pads the dataset so every rank gets the same
        number of samples, which counts the padded samples twice in the metrics. Here each rank
        gets a disjoint shard without padding (ranks may differ by one batch), and the torchmetrics
        states and Lightning's batch-size-weighted means are summed across ranks, so multi-process
        validation equals single-process validation.
        """
        sampler = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )


class TensorTaskDataset(Dataset):
    """In-memory dataset of feature tensors and per-task label tensors.

    Example:
        >>> import torch
        >>> ds = TensorTaskDataset(torch.zeros(3, 4), {"a": torch.tensor([0, 1, 0])})
        >>> len(ds), ds[1]["targets"]["a"].item()
        (3, 1)
    """

    def __init__(self, features: Tensor, targets: Mapping[str, Tensor]) -> None:
        for name, y in targets.items():
            if y.shape[0] != features.shape[0]:
                raise ValueError(
                    f"task {name!r}: {y.shape[0]} labels for {features.shape[0]} feature rows"
                )
        self.features = features
        self.targets = dict(targets)

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int) -> dict[str, object]:
        return {
            "features": self.features[index],
            "targets": {name: y[index] for name, y in self.targets.items()},
        }
