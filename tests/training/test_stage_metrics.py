"""`StageMetrics`: its modules keep the checkpoint names the model always had, and it updates
and logs each stage's metrics as the model's step did."""

import pytest
import torch

from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.training import StageMetrics, StepOutputs

TASKS = [TaskSpec("a", 2), TaskSpec("y", 1, kind="regression")]

# the training accumulators of a checkpoint written before StageMetrics existed
OLD_TRAIN_KEYS = [
    "stage_metrics.train_metrics.a.acc.confmat",
    "stage_metrics.train_metrics.a.balanced_acc.confmat",
    "stage_metrics.train_metrics.a.f1.confmat",
    "stage_metrics.train_metrics.y.mae.sum_abs_error",
    "stage_metrics.train_metrics.y.mae.total",
    "stage_metrics.train_metrics.y.mse.sum_squared_error",
    "stage_metrics.train_metrics.y.mse.total",
    "stage_losses.train_losses.a.mean_value",
    "stage_losses.train_losses.a.weight",
    "stage_losses.train_losses.y.mean_value",
    "stage_losses.train_losses.y.weight",
    "stage_losses.train_losses._total.mean_value",
    "stage_losses.train_losses._total.weight",
    "train_class_counts.a.counts",
]


def _model() -> MultiTaskModule:
    return MultiTaskModule(list(TASKS), trunk=DenseTrunk(4, widths=[4]), head_hidden=0)


def test_the_model_keeps_the_checkpoint_keys_of_its_metrics():
    model = _model()
    keys = [k for k in model.state_dict() if k.startswith(("stage_", "train_class"))]
    assert keys == OLD_TRAIN_KEYS
    assert list(StageMetrics(list(TASKS)).state_dict()) == OLD_TRAIN_KEYS
    assert not any(k.startswith("_metrics") for k in model.state_dict())
    # one set of modules, reachable both ways (Lightning finds logged metrics by their name)
    assert model._metrics.stage_metrics is model.stage_metrics
    assert model._metrics.train_class_counts is model.train_class_counts
    names = {id(m): n for n, m in model.named_modules()}
    assert names[id(model.stage_losses["train_losses"]["a"])] == "stage_losses.train_losses.a"


@pytest.mark.filterwarnings("ignore:.*was called before the ``update``")
def test_an_old_state_dict_loads_strictly():
    old = _model()
    old.stage_losses["train_losses"]["a"].update(torch.tensor(2.0), 3)
    state = {k: v.clone() for k, v in old.state_dict().items()}
    new = _model()
    new.load_state_dict(state, strict=True)
    assert float(new.stage_losses["train_losses"]["a"].compute()) == 2.0


def _step(outputs, targets, masks, losses, batch=4):
    return StepOutputs(
        torch.zeros(batch, 1), targets, masks, torch.zeros(batch, 1), outputs, losses
    )


def test_update_counts_labelled_samples_and_registers_once_per_epoch():
    metrics = StageMetrics([TaskSpec("a", 2)])
    logged = []

    def log(name, value, **kwargs):
        logged.append(name)

    outputs = {"a": torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])}
    targets = {"a": torch.tensor([0, 1, 1, -100])}
    masks = {"a": torch.tensor([True, True, True, False])}
    step = _step(outputs, targets, masks, {"a": torch.tensor(0.9)})
    metrics.update("train", step, torch.tensor(0.9), log)
    assert logged == [
        "train/a/loss",
        "train/a/acc",
        "train/a/balanced_acc",
        "train/a/f1",
        "train/loss",
    ]
    metrics.update("train", step, torch.tensor(0.3), log)
    assert len(logged) == 5  # registered once per epoch ...
    metrics.update("train", step, torch.tensor(0.3), log, step_value=True)
    assert logged[-1] == "train/loss" and len(logged) == 6  # ... but the step value every step
    values = metrics.values("train")["a"]
    assert values["acc"] == pytest.approx(2 / 3)  # the unlabelled sample is left out
    assert values["loss"] == pytest.approx(0.9)
    assert metrics.train_class_counts["a"].counts.tolist() == [3, 6]
    assert abs(float(metrics.stage_losses["train_losses"]["_total"].compute()) - 0.5) < 1e-6
    metrics.start_epoch("train")
    metrics.reset_train()
    metrics.update("train", step, torch.tensor(0.9), log)
    assert len(logged) == 11
    assert metrics.train_class_counts["a"].counts.tolist() == [4, 8]  # not reset


def test_ensembles_are_neither_updated_nor_logged():
    tasks = [TaskSpec("a", 2), TaskSpec("s", 3, role="adversarial")]
    metrics = StageMetrics(tasks, ensembles=["s"])
    logged = []

    def log(name, value, **kwargs):
        logged.append(name)

    outputs = {"a": torch.zeros(2, 2), "s": torch.zeros(2, 3)}
    targets = {"a": torch.tensor([0, 1]), "s": torch.tensor([0, 2])}
    masks = {n: torch.ones(2, dtype=torch.bool) for n in targets}
    losses = {"a": torch.tensor(0.5), "s": torch.tensor(1.0)}
    metrics.update("val", _step(outputs, targets, masks, losses, 2), torch.tensor(0.5), log)
    assert [n for n in logged if "/s/" in n] == []
    assert set(metrics.values("val")) == {"a"}
    assert metrics.epoch_losses("val") == {"a": 0.5}
    assert "stage_metrics.val_metrics.s.acc.confmat" not in metrics.state_dict()  # not persistent
    assert "s" in metrics.stage_metrics["val_metrics"]  # but kept, as checkpoints had it
    metrics.register_resumed_train(log)
    assert "train/s/loss" not in logged and "train/a/loss" in logged
