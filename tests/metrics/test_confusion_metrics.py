"""Confusion-matrix metrics against torchmetrics' own classification metrics."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from mtl_lightning.metrics import (
    ConfusionAccuracy,
    ConfusionBalancedAccuracy,
    ConfusionF1,
    confusion_counts,
    task_metrics,
)
from mtl_lightning.tasks import TaskSpec

PAIRS = [
    (ConfusionAccuracy, lambda k: MulticlassAccuracy(k, average="micro")),
    (ConfusionBalancedAccuracy, lambda k: MulticlassRecall(k, average="macro")),
    (ConfusionF1, lambda k: MulticlassF1Score(k, average="macro")),
]


def _batches(k: int, seed: int, absent: int | None = None, logits: bool = True):
    g = torch.Generator().manual_seed(seed)
    for n in (64, 17, 5, 33):
        target = torch.randint(0, k, (n,), generator=g)
        if absent is not None:  # a class that never occurs in the targets (but may be predicted)
            target[target == absent] = (absent + 1) % k
        preds = torch.randn(n, k, generator=g) if logits else torch.randint(0, k, (n,), generator=g)
        yield preds, target


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("k", [2, 5, 11])
@pytest.mark.parametrize("absent", [None, 1])
@pytest.mark.parametrize("logits", [True, False])
def test_matches_torchmetrics(ours, theirs, k, absent, logits):
    a, b = ours(k), theirs(k)
    for preds, target in _batches(k, seed=k, absent=absent, logits=logits):
        a.update(preds, target)
        b.update(preds, target)
    assert torch.allclose(a.compute(), b.compute(), atol=1e-6), (a.compute(), b.compute())


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_class_absent_from_targets_and_predictions(ours, theirs):
    """Class 3 never appears anywhere: torchmetrics leaves it out of the macro average."""
    preds = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    target = torch.tensor([0, 1, 2, 1, 1, 0, 2])
    a, b = ours(4), theirs(4)
    a.update(preds, target)
    b.update(preds, target)
    assert torch.allclose(a.compute(), b.compute(), atol=1e-6)


def test_predicted_but_absent_class_counts_with_recall_zero():
    # class 2 is predicted once but never a target: recall over classes 0, 1, 2 = (1 + 0.5 + 0) / 3
    m = ConfusionBalancedAccuracy(3)
    m.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    assert float(m.compute()) == pytest.approx(0.5)


def test_hand_computed_values():
    cm = confusion_counts(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0]), 2)
    assert cm.tolist() == [[1, 1], [1, 2]]
    m = ConfusionF1(2)
    m.update(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0]))
    # class 0: P = R = 1/2, F1 = 1/2; class 1: P = R = 2/3, F1 = 2/3
    assert float(m.compute()) == pytest.approx((0.5 + 2 / 3) / 2)


def test_merge_of_shards_equals_whole():
    """The state is a sum, so per-rank shards merged (as DDP's sum reduction) equal the whole."""
    preds, target = torch.randn(100, 5), torch.randint(0, 5, (100,))
    whole, s1, s2 = (ConfusionF1(5) for _ in range(3))
    whole.update(preds, target)
    s1.update(preds[:37], target[:37])
    s2.update(preds[37:], target[37:])
    s1.merge_state(s2)
    assert torch.equal(whole.confmat, s1.confmat)
    assert torch.equal(whole.compute(), s1.compute())


def test_reset_and_keys():
    col = task_metrics(TaskSpec("speaker", 4))
    assert sorted(col.keys()) == ["acc", "balanced_acc", "f1"]
    col.update(torch.randn(8, 4), torch.randint(0, 4, (8,)))
    col.reset()
    assert all(int(m.confmat.sum()) == 0 for m in col.values())
    assert sorted(task_metrics(TaskSpec("x", 1, kind="regression")).keys()) == ["mae", "mse"]


def test_rejects_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionAccuracy(1)


def test_bootstrap_point_and_interval_match_torchmetrics_recall():
    """The probe's vectorised bootstrap: each resample's balanced accuracy is torchmetrics'
    macro recall of that resample, and the point estimate is the full sample's."""
    from torchmetrics.functional.classification import multiclass_recall

    from mtl_lightning.probe import bootstrap_balanced_accuracy

    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 6, (90,), generator=g)
    preds = torch.where(torch.rand(90, generator=g) < 0.6, target, torch.randint(0, 6, (90,)))
    point, low, high = bootstrap_balanced_accuracy(preds, target, 6, n_boot=300, seed=1)
    assert point == pytest.approx(float(multiclass_recall(preds, target, 6, average="macro")))
    idx = torch.randint(0, 90, (300, 90), generator=torch.Generator().manual_seed(1))
    stats = torch.stack([multiclass_recall(preds[i], target[i], 6, average="macro") for i in idx])
    ref = torch.quantile(stats.double(), torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert (low, high) == pytest.approx(ref.tolist(), abs=1e-6)
    assert 0.0 <= low <= point <= high <= 1.0


@pytest.mark.parametrize("make", [m for m, _ in PAIRS])
def test_update_from_shared_counts_equals_update_from_predictions(make):
    """The module computes one confusion matrix per task and hands it to every metric."""
    from_preds, from_counts = make(4), make(4)
    for preds, target in _batches(4, seed=3):
        from_preds.update(preds, target)
        from_counts.update(counts=confusion_counts(preds, target, 4))
    assert torch.equal(from_preds.confmat, from_counts.confmat)
    assert torch.equal(from_preds.compute(), from_counts.compute())


def test_update_rejects_missing_inputs_and_wrong_count_shapes():
    metric = ConfusionAccuracy(3)
    with pytest.raises(ValueError, match="preds and target, or counts"):
        metric.update(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"counts must be 3 x 3, got \[2, 2\]"):
        metric.update(counts=torch.zeros(2, 2, dtype=torch.long))


def test_class_counts_from_confusion_row_sums_equal_label_counts():
    from mtl_lightning.metrics import ClassCounts

    from_labels, from_rows = ClassCounts(4), ClassCounts(4)
    for preds, target in _batches(4, seed=5):
        from_labels.update(target)
        from_rows.update(counts=confusion_counts(preds, target, 4).sum(dim=1))
    assert torch.equal(from_labels.counts, from_rows.counts)
    with pytest.raises(ValueError, match="4 entries"):
        from_rows.update(counts=torch.zeros(3, dtype=torch.long))
