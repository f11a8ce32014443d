"""Every strategy trains a step with a multilabel task; InverseMetricWeighting's metric keys."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_lightning.module import MultiTaskModule
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import (
    InverseMetricWeighting,
    UncertaintyWeighting,
)
from tests._multilabel_helpers import TinyData, TinyTrunk, tiny_trainer
from tests.weighting._strategies import strategy_factories

_NAMES = ["static", "inverse_metric", "uncertainty", "dwa", "rlw", "famo", "gradnorm"]
_NAMES += ["gradnorm_rep", "upgrad", "upgrad_rep", "mgda", "pcgrad", "imtlg", "aligned_mtl"]
STRATEGIES = {n: f for n, f in strategy_factories("tags").items() if n in [*_NAMES, "dualproj_rep"]}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_trains_a_multilabel_task_with_finite_weights(name, tmp_path):
    torch.manual_seed(0)
    dm = TinyData()
    model = MultiTaskModule(
        dm.tasks, trunk=TinyTrunk(), head_hidden=8, weighting=STRATEGIES[name]()
    )
    before = model.heads["tags"].net[0].weight.detach().clone()
    trainer = tiny_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, dm)
    assert trainer.global_step == 1
    weights = model.weighting.last_weights
    assert set(weights) == {"cls", "tags"}
    assert all(math.isfinite(w) for w in weights.values()), weights
    assert not torch.equal(model.heads["tags"].net[0].weight, before)  # the step reached it


def test_inverse_metric_uses_f1_macro_for_multilabel_tasks():
    tasks = [TaskSpec("cls", 3), TaskSpec("tags", 3, kind="multilabel")]
    w = InverseMetricWeighting(metric="acc", smoothing=0.0, floor=0.0)
    w.setup(tasks)
    assert w.task_keys == {"cls": "acc", "tags": "f1_macro"}
    w.on_validation_end({"cls": {"acc": 0.8}, "tags": {"f1_macro": 0.2, "f1_micro": 0.9}})
    # w ∝ 1/value, summing to 2: 1/0.8 : 1/0.2 = 1 : 4
    assert w.current_weights() == pytest.approx({"cls": 0.4, "tags": 1.6})


def test_a_metric_no_task_has_is_an_error_at_setup_naming_the_metrics_per_kind():
    tasks = [TaskSpec("cls", 3), TaskSpec("tags", 3, kind="multilabel")]
    with pytest.raises(ValueError) as error:
        MultiTaskModule(
            tasks, trunk=TinyTrunk(), weighting=InverseMetricWeighting(metric="bal_acc")
        )
    text = str(error.value)
    assert "metric 'bal_acc' is not logged for classification task(s) ['cls']" in text
    assert "classification: acc, balanced_acc, f1, loss" in text
    assert "multilabel: f1_micro, f1_macro, exact_match, loss" in text
    assert "regression: mse, mae, loss" in text
    with pytest.raises(
        ValueError, match=r"metric 'f1' is not logged for multilabel task\(s\) \['tags'\]"
    ):
        InverseMetricWeighting(multilabel_metric="f1").setup(tasks)
    with pytest.raises(ValueError, match="point in different directions"):
        InverseMetricWeighting(multilabel_metric="loss").setup(tasks)
    InverseMetricWeighting(metric="bal_acc").setup([TaskSpec("y", 1, kind="regression")])  # unused


def test_uncertainty_weights_a_multilabel_loss_like_a_classification_loss():
    tasks = [TaskSpec("tags", 3, kind="multilabel"), TaskSpec("y", 1, kind="regression")]
    u = UncertaintyWeighting()
    u.setup(tasks)
    u({"tags": torch.tensor(2.0), "y": torch.tensor(4.0)}, tasks)
    assert u.last_weights == {"tags": 1.0, "y": 0.5}  # exp(-s) vs exp(-s) / 2 at s = 0
