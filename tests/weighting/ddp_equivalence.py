"""Train a few steps with each strategy; rank 0 saves the final parameters (run by the DDP test).

Usage: python ddp_equivalence.py OUT.pt DEVICES GLOBAL_BATCH STRATEGY [STRATEGY ...]
With DEVICES=2 each process gets GLOBAL_BATCH/2 samples of every global batch (Lightning's
DistributedSampler without shuffling deals the samples out alternately), so both runs see the
same global batches.
"""

from __future__ import annotations

import sys
import warnings

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from torchjd.aggregation import MGDA, PCGrad, UPGrad

from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import (
    FAMO,
    JacobianAggregation,
    RandomLossWeighting,
    StaticWeighting,
    UncertaintyWeighting,
)

warnings.filterwarnings("ignore")

STRATEGIES = {
    "static": lambda: StaticWeighting({"b": 0.5}),
    "uncertainty": UncertaintyWeighting,
    "famo": FAMO,  # its post-step recomputation and update under DDP
    "rlw": RandomLossWeighting,  # the run's seed, agreed by the ranks
    "pcgrad": lambda: JacobianAggregation(PCGrad()),
    "mgda": lambda: JacobianAggregation(MGDA()),
    "upgrad": lambda: JacobianAggregation(UPGrad()),
    "upgrad_rep": lambda: JacobianAggregation(UPGrad(), level="rep"),
}
TASKS = [
    TaskSpec("a", 3),
    TaskSpec("b", 4),
    TaskSpec("r", 1, kind="regression"),
    TaskSpec("adv", 2, role="adversarial", weight=0.3),
]


class TinyTrunk(nn.Module):
    """No BatchNorm, no dropout: the only per-rank difference is the data shard."""

    out_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def data(n: int = 96) -> TensorTaskDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 10, generator=g)
    targets = {
        "a": (x[:, 0] > 0).long() + (x[:, 1] > 0).long(),
        "b": torch.randint(0, 4, (n,), generator=g),
        "r": x[:, 2:4].sum(1) + 0.1 * torch.randn(n, generator=g),
        "adv": (x[:, 5] > 0).long(),
    }
    return TensorTaskDataset(x, targets)


def run(name: str, devices: int, global_batch: int) -> dict[str, Tensor]:
    pl.seed_everything(0, verbose=False)
    model = MultiTaskModule(
        TASKS,
        trunk=TinyTrunk(),
        head_hidden=8,
        weighting=STRATEGIES[name](),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.2),
        grl_lambda=0.5,
    )

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            ds = data()
            sampler = DistributedSampler(ds, shuffle=False) if devices > 1 else None
            return DataLoader(ds, batch_size=global_batch // devices, sampler=sampler)

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        # the progress bar stays on: it reads the metrics on rank zero only
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        use_distributed_sampler=False,  # the explicit, unshuffled sampler above
    )
    trainer.fit(model, datamodule=Data())
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.startswith(("trunk", "heads", "weighting"))
    }


def main() -> None:
    out, devices, global_batch, *names = sys.argv[1:]
    torch.set_num_threads(1)
    results = {name: run(name, int(devices), int(global_batch)) for name in names}
    if int(__import__("os").environ.get("LOCAL_RANK", "0")) == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main()
