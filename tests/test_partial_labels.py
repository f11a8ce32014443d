"""Missing labels (-100 / NaN) and conditional tasks: losses, metrics and baselines use labelled samples only."""

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from mtl_lightning.data import SyntheticSeedDataModule
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn.dense import DenseTrunk
from mtl_lightning.tasks import TaskSpec

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def _model(tasks):
    torch.manual_seed(0)
    return MultiTaskModule(tasks, trunk=DenseTrunk(6, divisors=(1,), dropout=0.0), head_hidden=0)


def _batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g)


def test_class_loss_averages_over_labelled_samples_only():
    tasks = [TaskSpec("a", 3), TaskSpec("r", 1, kind="regression")]
    m = _model(tasks)
    x = _batch()
    y = torch.tensor([0, -100, 2, 1, -100, 0])
    r = torch.tensor([0.5, float("nan"), 1.0, float("nan"), 2.0, 0.0])
    step = m.forward_losses({"features": x, "targets": {"a": y, "r": r}}, 0)
    keep = y != -100
    expected = F.cross_entropy(step.outputs["a"][keep], y[keep])
    torch.testing.assert_close(step.losses["a"], expected)
    ok = ~torch.isnan(r)
    torch.testing.assert_close(step.losses["r"], F.mse_loss(step.outputs["r"][ok, 0], r[ok]))


def test_all_missing_batch_gives_exactly_zero_loss_and_finite_gradients():
    tasks = [TaskSpec("a", 3), TaskSpec("r", 1, kind="regression")]
    m = _model(tasks)
    batch = {
        "features": _batch(4),
        "targets": {"a": torch.full((4,), -100), "r": torch.full((4,), float("nan"))},
    }
    step = m.forward_losses(batch, 0)
    assert step.losses["a"].item() == 0.0 and step.losses["r"].item() == 0.0
    total = m.shared_step(batch, 0, "train")
    assert total.item() == 0.0
    total.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in m.parameters()
        if p.requires_grad
    )


def test_metrics_and_majority_count_labelled_samples_only(tmp_path):
    tasks = [TaskSpec("a", 2)]
    m = _model(tasks)
    x = _batch(6)
    # 4 labelled samples: three of class 1, one of class 0 -> majority 0.75
    y = torch.tensor([1, -100, 1, 0, -100, 1])
    with torch.no_grad():
        m.shared_step({"features": x, "targets": {"a": y}}, 0, "train")
    assert m.train_class_counts["a"].counts.tolist() == [1, 3]
    acc = m.stage_metrics["train_metrics"]["a"]["acc"]
    preds = m(x)["a"].argmax(-1)
    keep = y != -100
    assert float(acc.compute()) == pytest.approx(float((preds[keep] == y[keep]).float().mean()))
    loss_metric = m.stage_losses["train_losses"]["a"]
    assert float(loss_metric.weight) == 4.0  # weighted by the labelled count


def test_conditional_task_ignores_labels_outside_its_condition():
    tasks = [TaskSpec("seed", 2), TaskSpec("quality", 3, only_when={"seed": [1]})]
    m = _model(tasks)
    x = _batch(5)
    seed = torch.tensor([1, 0, 1, 0, 1])
    quality = torch.tensor([2, 0, -100, 1, 0])
    step = m.forward_losses({"features": x, "targets": {"seed": seed, "quality": quality}}, 0)
    assert step.masks["quality"].tolist() == [True, False, False, False, True]
    keep = step.masks["quality"]
    torch.testing.assert_close(
        step.losses["quality"], F.cross_entropy(step.outputs["quality"][keep], quality[keep])
    )
    # a missing condition label makes the conditional label missing too
    seed2 = torch.tensor([-100, 0, 1, 0, 1])
    step2 = m.forward_losses({"features": x, "targets": {"seed": seed2, "quality": quality}}, 0)
    assert step2.masks["quality"].tolist() == [False, False, False, False, True]


def test_conditions_are_validated():
    with pytest.raises(ValueError, match="unknown task 'sed'"):
        MultiTaskModule([TaskSpec("seed", 2), TaskSpec("q", 3, only_when={"sed": [1]})])
    with pytest.raises(ValueError, match=r"values \[2\] are not classes of 'seed'"):
        MultiTaskModule([TaskSpec("seed", 2), TaskSpec("q", 3, only_when={"seed": [2]})])


def test_seed_quality_data_trains_and_conditions_matter(tmp_path):
    def fit(conditions):
        pl.seed_everything(0, verbose=False)
        dm = SyntheticSeedDataModule(n_train=512, n_eval=256, batch_size=64, conditions=conditions)
        model = MultiTaskModule(
            dm.tasks,
            trunk=DenseTrunk(16, divisors=(1, 2), dropout=0.0),
            optimizer=lambda p: torch.optim.AdamW(p, lr=0.01),
        )
        trainer = pl.Trainer(
            max_epochs=6,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(model, dm)
        return model, trainer.callback_metrics

    model, metrics = fit(None)
    assert float(metrics["val/quality/balanced_acc"]) > 0.6
    # the majority baseline is over seed samples with a grade (about a third each), not the
    # placeholder-dominated column (>60% zeros)
    counts = model.train_class_counts["quality"].counts.float()
    assert float(counts.max() / counts.sum()) < 0.45
    _, unconditioned = fit({})
    assert not math.isclose(
        float(unconditioned["val/quality/acc"]), float(metrics["val/quality/acc"])
    )
