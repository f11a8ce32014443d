"""`InMemoryDataModule`: train/val/test splits held in memory, and the loaders that read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mtl_lightning.data.base import MultiTaskDataModule

__all__ = ["InMemoryDataModule", "LoaderOptions"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LoaderOptions:
    """What every loader of a datamodule is built with."""

    batch_size: int
    seed: int  # of the training order (and of generated splits)
    num_workers: int = 0


class InMemoryDataModule(MultiTaskDataModule):
    """Base for datamodules whose splits are datasets in memory: ``train_set``, ``val_set``,
    ``test_set`` (``None`` until ``setup()``), and the loaders over them.

    The training loader is :meth:`~MultiTaskDataModule.train_loader` (a seeded order per epoch
    that checkpoints its position: exact mid-epoch resume, disjoint DDP shards), the others
    :meth:`~MultiTaskDataModule.eval_loader` (every sample once, under DDP too);
    ``predict_dataloader`` reads the split named by :attr:`_predict_from` (``test``).

    A subclass either implements :meth:`_make_split`, and the inherited ``setup()`` builds each
    split once with its own seed (``seed * 1009 + 1``, ``+ 2``, ``+ 3`` for train, val, test), or
    overrides ``setup()`` (data read from files). Loader settings come from
    :meth:`_loader_options`: by default the ``batch_size``, ``seed`` and (if there is one,
    else 0) ``num_workers`` hyperparameters.

    Example:
        >>> import torch
        >>> from mtl_lightning.data import TensorTaskDataset
        >>> from mtl_lightning.tasks import TaskSpec
        >>> class Halves(InMemoryDataModule):
        ...     def __init__(self, batch_size: int = 2, seed: int = 0) -> None:
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...         self._tasks = [TaskSpec("a", 2)]
        ...     def _make_split(self, split: str, seed: int) -> TensorTaskDataset:
        ...         x = torch.rand(4, 3, generator=torch.Generator().manual_seed(seed))
        ...         return TensorTaskDataset(x, {"a": (x[:, 0] > 0.5).long()})
        >>> dm = Halves(); dm.setup()
        >>> len(dm.train_set), len(list(dm.train_dataloader())), dm.val_dataloader().batch_size
        (4, 2, 2)
    """

    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None
    #: the split ``predict_dataloader()`` reads
    _predict_from: str = "test"

    def setup(self, stage: str | None = None) -> None:
        """Build the three splits with :meth:`_make_split`, once (later calls keep them)."""
        if self.train_set is None:
            seed = self._loader_options().seed
            for offset, split in enumerate(SPLITS, start=1):
                setattr(self, f"{split}_set", self._make_split(split, seed * 1009 + offset))

    def _make_split(self, split: str, seed: int) -> Dataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``), generated from ``seed``."""
        raise NotImplementedError(
            f"{type(self).__name__}: implement _make_split(split, seed) or override setup()"
        )

    def _loader_options(self) -> LoaderOptions:
        h = self.hparams
        return LoaderOptions(h.batch_size, h.seed, h.get("num_workers", 0))

    def _saved_state(self, path: str) -> dict[str, Any]:
        """This datamodule's :meth:`state_dict` in the checkpoint ``path`` (vocabulary,
        statistics): Lightning stores it under the class's qualified name."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        key = type(self).__qualname__
        if key not in ckpt:
            raise ValueError(
                f"{path}: the checkpoint holds no {key} state (vocabulary, statistics)"
            )
        return ckpt[key]

    def _split_set(self, split: str) -> Dataset:
        """The dataset of ``split``; a ``RuntimeError`` before ``setup()``."""
        dataset = getattr(self, f"{split}_set", None)
        if dataset is None:
            raise RuntimeError("call setup() before requesting a dataloader")
        return dataset

    def _finish_loader(self, loader: DataLoader) -> DataLoader:
        """Every loader passes through here (e.g. to set a ``collate_fn``)."""
        return loader

    def _eval_dataloader(self, split: str) -> DataLoader:
        o = self._loader_options()
        loader = self.eval_loader(self._split_set(split), o.batch_size, o.num_workers)
        return self._finish_loader(loader)

    def train_dataloader(self) -> DataLoader:
        o = self._loader_options()
        # seeded per-epoch shuffle that checkpoints its position (exact mid-epoch resume, DDP shards)
        loader = self.train_loader(
            self._split_set("train"), o.batch_size, seed=o.seed, num_workers=o.num_workers
        )
        return self._finish_loader(loader)

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_dataloader(self._predict_from)
