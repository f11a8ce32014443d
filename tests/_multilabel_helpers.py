"""Tiny tensor data with a classification task and a multilabel task, and a tiny trunk."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtl_lightning.data.base import MultiTaskDataModule, TensorTaskDataset
from mtl_lightning.tasks import TaskSpec

warnings.filterwarnings("ignore", ".*does not have many workers.*")
NAN = float("nan")


class TinyTrunk(nn.Module):
    """``Linear(8, 16) -> ReLU``."""

    out_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def tiny_split(n: int, seed: int, names: tuple[str, ...] = ("cls", "tags")) -> TensorTaskDataset:
    """``cls`` (3 classes, from x[0]), ``tags`` (3 labels: x[1] > 0, x[2] > 0, x[1] + x[2] > 1;
    every 4th sample has no tags, an all-NaN row) and ``y`` (regression: x[3]), those named."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    cls = torch.bucketize(x[:, 0].contiguous(), torch.tensor([-0.4, 0.4]))
    tags = torch.stack([x[:, 1] > 0, x[:, 2] > 0, x[:, 1] + x[:, 2] > 1], dim=1).float()
    tags[::4] = NAN
    targets = {"cls": cls, "tags": tags, "y": x[:, 3:4].clone()}
    return TensorTaskDataset(x, {k: targets[k] for k in names})


class TinyData(MultiTaskDataModule):
    def __init__(self, tasks: list[TaskSpec] | None = None, n: int = 32, seed: int = 0) -> None:
        super().__init__()
        self._tasks = tasks or [TaskSpec("cls", 3), TaskSpec("tags", 3, kind="multilabel")]
        self.n, self.seed = n, seed
        self.train_set = self.val_set = self.test_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            names = tuple(t.name for t in self._tasks)
            self.train_set = tiny_split(self.n, self.seed, names)
            self.val_set = tiny_split(16, self.seed + 1, names)
            self.test_set = tiny_split(16, self.seed + 2, names)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.train_set, batch_size=16, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.val_set, batch_size=16)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.test_set, batch_size=16)

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.test_set, batch_size=16)


def tiny_trainer(tmp_path, **kw) -> pl.Trainer:
    options = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**options, **kw})
