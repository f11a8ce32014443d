"""Multilabel tasks: spec, batch and split checks, loss, metrics, baseline, training, reports."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MultilabelF1Score

from mtl_lightning.callbacks.summary import tensorboard_layout
from mtl_lightning.callbacks.task_affinity import TaskAffinity
from mtl_lightning.checks import DataError, check_split
from mtl_lightning.data.predictions import prediction_rows
from mtl_lightning.data.vocab import LabelVocab
from mtl_lightning.losses import task_loss
from mtl_lightning.metrics import (
    LabelCounts,
    MultilabelExact,
    MultilabelF1,
    constant_f1_macro,
    task_metrics,
)
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.probe import probe_model, probe_task_names
from mtl_lightning.summary import format_table, task_results, verdict
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.validation import BatchError, check_batch, labelled_mask
from mtl_lightning.weighting import InverseMetricWeighting
from tests._multilabel_helpers import NAN, TinyData, TinyTrunk, tiny_trainer

TAGS = TaskSpec("tags", 3, kind="multilabel")


def test_spec_kind_size_and_adversarial_is_rejected():
    assert TaskSpec("one", 1, kind="multilabel").is_multilabel
    assert not TAGS.is_classification and math.isnan(TAGS.chance)
    with pytest.raises(ValueError, match=r"task 'tags': a multilabel task cannot be adversarial"):
        TaskSpec("tags", 3, kind="multilabel", role="adversarial")
    with pytest.raises(ValueError, match=r"task 'tags': size must be an integer >= 1"):
        TaskSpec("tags", 0, kind="multilabel")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (torch.tensor([[1.0, 0.0, 1.0], [NAN, 1.0, NAN]]), r"partly NaN at sample\(s\) \[1\]"),
        (
            torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]),
            r"must be 0. or 1.; found 2.0 at sample",
        ),
        (
            torch.tensor([[1, 0, 1], [0, 0, 0]]),
            r"float tensor of shape \[2, 3\].*dtype torch.int64",
        ),
        (
            torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
            r"float tensor of shape \[2, 3\].*got shape \[2, 2\]",
        ),
    ],
)
def test_batch_check_names_task_and_rows(target, message):
    with pytest.raises(BatchError, match=r"batch 4, task 'tags': .*" + message):
        check_batch(torch.zeros(2, 1), {"tags": target}, [TAGS], 4)


def test_split_check_and_labelled_mask():
    y = torch.tensor([[1.0, 0.0, 1.0], [NAN, NAN, NAN], [0.0, NAN, 1.0]])
    with pytest.raises(DataError, match=r"val split, task 'tags': .*partly NaN at row\(s\) \[2\]"):
        check_split("val", torch.zeros(3, 2), {"tags": y}, [TAGS])
    check_split("val", torch.zeros(2, 2), {"tags": y[:2]}, [TAGS])  # all-NaN row: missing
    assert labelled_mask(TAGS, y[:2]).tolist() == [True, False]


def test_loss_is_bce_over_labelled_rows_with_pos_weight():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.3, 0.3], [-2.0, 1.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [NAN, NAN, NAN], [0.0, 0.0, 1.0]])
    mask = labelled_mask(TAGS, y)
    p, t = torch.sigmoid(logits[[0, 2]]), y[[0, 2]]
    hand = -(t * p.log() + (1 - t) * (1 - p).log()).mean()  # 2 rows x 3 labels
    assert float(task_loss(TAGS, logits, y, mask)) == pytest.approx(float(hand), rel=1e-6)
    w = torch.tensor([2.0, 0.5, 3.0])
    weighted = TaskSpec("tags", 3, kind="multilabel", class_weights=w.tolist())
    hand_w = -(w * t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert float(task_loss(weighted, logits, y, mask)) == pytest.approx(float(hand_w), rel=1e-6)
    none = task_loss(TAGS, logits, y, torch.zeros(3, dtype=torch.bool))
    assert float(none) == 0.0 and none.requires_grad is False  # no graph: inputs are leaves


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_metrics_match_hand_counts_and_are_nan_when_undefined():
    probs = torch.tensor([[0.9, 0.2, 0.1], [0.8, 0.7, 0.1], [0.1, 0.6, 0.2], [0.4, 0.1, 0.2]])
    target = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    metrics = task_metrics(TAGS)
    assert math.isnan(float(metrics["exact_match"].compute()))
    assert math.isnan(float(metrics["f1_macro"].compute()))
    metrics.update(probs, target)
    # label 0: tp 1 fp 1 fn 1 -> 1/2; label 1: tp 2 -> 1; label 2: never positive -> left out
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["f1_macro"] == pytest.approx((0.5 + 1.0) / 2)
    assert values["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert values["exact_match"] == pytest.approx(2 / 4)  # rows 0 and 2
    # with every label present, macro F1 is torchmetrics' own
    target[3, 2] = 1
    ours, theirs = MultilabelF1(3, average="macro"), MultilabelF1Score(3, average="macro")
    ours.update(probs, target), theirs.update(probs, target)
    assert float(ours.compute()) == pytest.approx(float(theirs.compute()))
    exact = MultilabelExact(3)
    exact.update(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    assert float(exact.compute()) == 1.0


def test_baseline_is_the_f1_macro_of_always_predicting_positive():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(40, 3, generator=g) < torch.tensor([0.2, 0.5, 0.9])).long()
    counts = LabelCounts(3)
    counts.update(labels.float())
    always = MultilabelF1(3, average="macro")
    always.update(torch.ones(40, 3), labels)  # the constant predictor on the training labels
    assert float(counts.compute()) == pytest.approx(float(always.compute()), rel=1e-6)
    # never positive: always negative is exactly right, F1 undefined -> left out -> NaN
    assert math.isnan(float(constant_f1_macro(torch.tensor([0, 0]), torch.tensor(5))))
    assert float(constant_f1_macro(torch.tensor([0, 5]), torch.tensor(5))) == 1.0
    assert math.isnan(float(constant_f1_macro(torch.tensor([0, 0]), torch.tensor(0))))


def test_verdict_and_table_use_f1_macro_against_the_baseline():
    logged = {"val/tags/f1_macro": 0.9, "val/tags/baseline": 0.6, "val/tags/exact_match": 0.4}
    (row,) = task_results([TAGS], logged)
    assert row["verdict"] == "learned" and row["baseline"] == 0.6
    assert verdict(TAGS, 0.62, baseline=0.6) == "not learned (at baseline)"
    assert verdict(TAGS, 0.9) == "n/a"  # no baseline logged
    assert "f1_macro 0.900" in format_table([row])


def test_predictions_rows_and_layout():
    out = {"pred": torch.tensor([[1, 0, 1], [0, 0, 0]]), "prob": torch.rand(2, 3)}
    rows = prediction_rows(LabelVocab({}), ["a", "b"], {"tags": out})
    assert [r["tags"] for r in rows] == ["0;2", ""]
    assert len(str(rows[0]["tags_prob"]).split(";")) == 3
    charts = tensorboard_layout([TAGS])["val: accuracy vs chance"]["tags"][1]
    assert charts == [f"val/tags/{k}" for k in ("f1_micro", "f1_macro", "exact_match", "baseline")]


def test_multilabel_task_trains_logs_predicts_and_feeds_affinity(tmp_path):
    """One tiny fit (2 epochs, beside a classification and an adversarial regression task):
    metrics and baseline logged, InverseMetricWeighting reads f1_macro, predict gives 0/1 and
    sigmoid, the affinity and probe helpers accept the task."""
    torch.manual_seed(0)
    y = TaskSpec("y", 1, kind="regression", role="adversarial")  # behind gradient reversal
    dm = TinyData([TaskSpec("cls", 3), TAGS, y])
    model = MultiTaskModule(
        dm.tasks, trunk=TinyTrunk(), head_hidden=8, weighting=InverseMetricWeighting(smoothing=0.0)
    )
    trainer = tiny_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, dm)
    logged = trainer.callback_metrics
    for key in ("f1_micro", "f1_macro", "exact_match", "loss", "baseline"):
        assert math.isfinite(float(logged[f"val/tags/{key}"])), key
    # the baseline from the training labels (2 epochs: each row counted twice, same rates)
    train = dm.train_set.targets["tags"]
    rows = train[~train.isnan().any(dim=1)]
    expected = constant_f1_macro(rows.sum(0).long(), torch.tensor(rows.shape[0]))
    assert float(logged["train/tags/baseline"]) == pytest.approx(float(expected), rel=1e-6)
    weights = model.weighting.current_weights()
    assert weights["tags"] != 1.0 and all(math.isfinite(w) for w in weights.values())
    assert math.isfinite(float(logged["val/y/mse"])) and "train/y/baseline" not in logged

    batch = next(iter(dm.predict_dataloader()))
    out = model.predict_step(batch, 0)["tags"]
    logits = model(batch["features"])["tags"]
    torch.testing.assert_close(out["prob"], torch.sigmoid(logits))
    assert torch.equal(out["pred"], (out["prob"] > 0.5).long())

    affinity, cosine, measured = TaskAffinity().measure_pairs(model, batch, lr=0.01)
    assert bool(measured.all()) and bool(torch.isfinite(affinity).all())
    with pytest.raises(ValueError, match="name classification tasks"):
        probe_task_names(model, ["tags"])


def test_probe_of_an_adversary_beside_a_multilabel_main_task():
    torch.manual_seed(0)
    dm = TinyData([TaskSpec("cls", 3, role="adversarial"), TAGS])
    dm.setup("fit")
    model = MultiTaskModule(dm.tasks, trunk=TinyTrunk(), head_hidden=8)
    (result,) = probe_model(model, dm.train_set, dm.val_set, n_boot=20, kinds=("linear",))
    assert result.task == "cls" and math.isfinite(result.balanced_acc)
