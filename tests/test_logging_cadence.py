"""Step values (task weights, gradient cosines) are written at the step they were measured on."""

import csv
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from torchjd.aggregation import UPGrad

from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import JacobianAggregation, RandomLossWeighting

warnings.filterwarnings("ignore", ".*does not have many workers.*")


class _Measured(pl.Callback):
    """What the module used at each batch: its weights and (when due) its cosine."""

    def __init__(self) -> None:
        self.weights: dict[int, float] = {}
        self.cos: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[batch_idx] = pl_module.weighting.last_weights["a"]
        value = trainer.callback_metrics.get("train/grad_cos/a__b")
        if value is not None and pl_module._grad_cos_due():
            self.cos[batch_idx] = float(value)


@pytest.mark.parametrize("weighting", [RandomLossWeighting, lambda: JacobianAggregation(UPGrad())])
def test_logged_step_values_belong_to_their_step(tmp_path, weighting):
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    n = 8 * 23
    ds = TensorTaskDataset(
        torch.randn(n, 6, generator=g),
        {"a": torch.randint(0, 2, (n,), generator=g), "b": torch.randint(0, 3, (n,), generator=g)},
    )
    model = MultiTaskModule(
        [TaskSpec("a", 2), TaskSpec("b", 3)],
        trunk=DenseTrunk(6, dropout=0.0),
        head_hidden=0,
        weighting=weighting(),
        grad_cos_every_n_steps=5,
    )
    measured = _Measured()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        log_every_n_steps=5,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[measured],
    )
    trainer.fit(model, DataLoader(ds, batch_size=8))
    with open(f"{trainer.logger.log_dir}/metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/weight/a")]
    assert [int(r["step"]) for r in rows] == [4, 9, 14, 19]
    for row in rows:
        step = int(row["step"])
        assert float(row["train/weight/a"]) == pytest.approx(measured.weights[step], rel=1e-6)
        assert float(row["train/grad_cos/a__b"]) == pytest.approx(measured.cos[step], rel=1e-5)
    # the values change from step to step: a stale value would not match
    assert len({round(float(r["train/grad_cos/a__b"]), 5) for r in rows}) == len(rows)
