"""Step values (task weights, gradient cosines, the step loss, the reversal lambda) are written at
the step they were measured on, and logged on the steps Lightning's loggers write."""

import csv
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from torchjd.aggregation import UPGrad

from mtl_lightning.callbacks import GradientReversalSchedule
from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.log_cadence import logger_writes_step
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
        self.loss: dict[int, float] = {}
        self.lam: dict[int, float] = {}
        self.bar_loss: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[batch_idx] = pl_module.weighting.last_weights["a"]
        self.loss[batch_idx] = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        self.lam[batch_idx] = pl_module.grl_lambda
        if trainer.progress_bar_callback is not None:
            self.bar_loss[batch_idx] = float(trainer.progress_bar_metrics["train/loss_step"])
        value = trainer.callback_metrics.get("train/grad_cos/a__b")
        if value is not None and pl_module._grad_cos_due():
            self.cos[batch_idx] = float(value)


def _dataset(batches: int, seed: int) -> TensorTaskDataset:
    """``batches`` batches of 8: 6 features, task ``a`` (2 classes) and ``b`` (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    n = 8 * batches
    return TensorTaskDataset(
        torch.randn(n, 6, generator=g),
        {"a": torch.randint(0, 2, (n,), generator=g), "b": torch.randint(0, 3, (n,), generator=g)},
    )


@pytest.mark.parametrize("weighting", [RandomLossWeighting, lambda: JacobianAggregation(UPGrad())])
def test_logged_step_values_belong_to_their_step(tmp_path, weighting):
    pl.seed_everything(0, verbose=False)
    ds = _dataset(batches=23, seed=0)
    model = MultiTaskModule(
        [TaskSpec("a", 2), TaskSpec("b", 3)],
        trunk=DenseTrunk(6, dropout=0.0, widths=[1, 1, 1]),
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
        callbacks=[measured, GradientReversalSchedule(schedule="linear")],
    )
    trainer.fit(model, DataLoader(ds, batch_size=8))
    with open(f"{trainer.logger.log_dir}/metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/weight/a")]
    assert [int(r["step"]) for r in rows] == [4, 9, 14, 19]
    for row in rows:
        step = int(row["step"])
        assert float(row["train/weight/a"]) == pytest.approx(measured.weights[step], rel=1e-6)
        assert float(row["train/grad_cos/a__b"]) == pytest.approx(measured.cos[step], rel=1e-5)
        assert float(row["train/loss_step"]) == pytest.approx(measured.loss[step], rel=1e-6)
        assert float(row["train/grl_lambda"]) == pytest.approx(measured.lam[step], rel=1e-6)
    # the values change from step to step: a stale value would not match
    assert len({round(float(r["train/grad_cos/a__b"]), 5) for r in rows}) == len(rows)


def _tiny_fit(tmp_path, callbacks, **trainer_kwargs):
    pl.seed_everything(0, verbose=False)
    ds = _dataset(batches=7, seed=1)
    model = MultiTaskModule(
        [TaskSpec("a", 2), TaskSpec("b", 3)],
        trunk=DenseTrunk(6, dropout=0.0, widths=[1, 1, 1]),
        head_hidden=0,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    trainer.fit(model, DataLoader(ds, batch_size=8))
    return trainer


class _CompareWithLightning(pl.Callback):
    def __init__(self) -> None:
        self.ours: list[bool] = []
        self.lightnings: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ours.append(logger_writes_step(trainer, trainer.global_step + 1))
        # when Lightning's logger connector writes (update_train_step_metrics; private: checked
        # here, not used by the package)
        connector = trainer._logger_connector
        self.lightnings.append(bool(connector.should_update_logs or trainer.fast_dev_run))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"log_every_n_steps": 3, "max_epochs": 2},
        {"log_every_n_steps": 1, "max_epochs": 1},
        {"log_every_n_steps": 0, "max_epochs": 1},
        {"fast_dev_run": 3},
    ],
    ids=["every3", "every1", "never", "fast_dev_run"],
)
def test_logger_writes_step_follows_lightnings_rule(tmp_path, kwargs):
    compare = _CompareWithLightning()
    _tiny_fit(tmp_path, [compare], enable_progress_bar=False, **kwargs)
    assert compare.ours == compare.lightnings
    assert len(compare.ours) >= 3


def test_progress_bar_shows_every_steps_loss(tmp_path):
    """With a progress bar, the step loss is logged on every step, not only on written ones."""
    measured = _Measured()
    trainer = _tiny_fit(
        tmp_path,
        [measured, GradientReversalSchedule()],
        max_epochs=1,
        log_every_n_steps=50,
        enable_progress_bar=True,
    )
    assert trainer.progress_bar_callback is not None
    assert sorted(measured.bar_loss) == list(range(7))
    for step, value in measured.bar_loss.items():
        assert value == pytest.approx(measured.loss[step], rel=1e-6), step
