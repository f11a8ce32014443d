"""One state per task: the shared metrics (``balanced_acc``, ``f1``; ``f1_macro``) read their
source's states, give torchmetrics' values, and checkpoint as when each kept its own copy."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassRecall,
    MultilabelExactMatch,
    MultilabelF1Score,
    MultilabelStatScores,
)

from mtl_lightning.metrics import (
    ClassCounts,
    ConfusionAccuracy,
    ConfusionBalancedAccuracy,
    ConfusionF1,
    LabelCounts,
    MultilabelExact,
    MultilabelF1,
    SharedConfusionF1,
    SharedStates,
    f1_from_confusion,
    label_stats,
    task_metrics,
    training_counts,
    update_task_metrics,
)
from mtl_lightning.metrics.rank_states import (
    checkpointed_metric_keys,
    sum_metric_states,
    zero_metric_states,
)
from mtl_lightning.tasks import TaskSpec


def _class_batches(k: int, seed: int, absent: int | None = None):
    g = torch.Generator().manual_seed(seed)
    for n in (64, 17, 1, 33):
        target = torch.randint(0, k, (n,), generator=g)
        if absent is not None:  # never a target (but may be predicted)
            target[target == absent] = (absent + 1) % k
        yield torch.randn(n, k, generator=g), target


def _label_batches(k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    prevalence = torch.linspace(0.05, 0.9, k)
    for n in (64, 9, 1, 40):
        target = (torch.rand(n, k, generator=g) < prevalence).float()
        yield torch.randn(n, k, generator=g) * 2, target


def _values(collection) -> dict[str, float]:
    return {key: float(metric.compute()) for key, metric in collection.items()}


@pytest.mark.parametrize("k", [2, 3, 7])
@pytest.mark.parametrize("absent", [None, 1])
def test_classification_values_equal_torchmetrics(k, absent):
    task = TaskSpec("t", k)
    ours, counts = task_metrics(task), training_counts(task)
    theirs = {
        "acc": MulticlassAccuracy(k, average="micro"),
        "balanced_acc": MulticlassRecall(k, average="macro"),
        "f1": MulticlassF1Score(k, average="macro"),
    }
    labels = []
    for logits, target in _class_batches(k, seed=k, absent=absent):
        update_task_metrics(task, ours, logits, target, counts)
        for metric in theirs.values():
            metric.update(logits, target)
        labels.append(target)
    values = _values(ours)
    for key, metric in theirs.items():
        assert values[key] == pytest.approx(float(metric.compute()), abs=1e-6), key
    assert counts.counts.tolist() == torch.bincount(torch.cat(labels), minlength=k).tolist()


def test_classification_values_equal_a_metric_per_value():
    """The former layout (each value its own confusion matrix) gives bit-identical values."""
    task = TaskSpec("t", 5)
    shared = task_metrics(task)
    separate = {"acc": ConfusionAccuracy(5), "balanced_acc": ConfusionBalancedAccuracy(5)}
    separate["f1"] = ConfusionF1(5)
    for logits, target in _class_batches(5, seed=1, absent=3):
        update_task_metrics(task, shared, logits, target)
        for metric in separate.values():
            metric.update(logits, target)
    for key, metric in separate.items():
        assert torch.equal(shared[key].compute(), metric.compute()), key


def _macro_f1_over_present_labels(tp, fp, fn) -> float:
    present = (tp + fp + fn) > 0
    per_label = 2 * tp[present].double() / (2 * tp + fp + fn)[present].double()
    return float(per_label.mean()) if bool(present.any()) else math.nan


@pytest.mark.parametrize("k", [2, 3, 6])
def test_multilabel_values_equal_torchmetrics(k):
    task = TaskSpec("m", k, kind="multilabel")
    ours, counts = task_metrics(task), training_counts(task)
    stats = MultilabelStatScores(k, average="none")
    micro, exact = MultilabelF1Score(k, average="micro"), MultilabelExactMatch(k)
    for logits, target in _label_batches(k, seed=k):
        update_task_metrics(task, ours, logits, target, counts)
        probs = torch.sigmoid(logits)
        for metric in (stats, micro, exact):
            metric.update(probs, target.long())
    values = _values(ours)
    assert values["f1_micro"] == pytest.approx(float(micro.compute()), abs=1e-6)
    assert values["exact_match"] == pytest.approx(float(exact.compute()), abs=1e-6)
    tp, fp, tn, fn, _ = stats.compute().reshape(-1, 5).unbind(dim=-1)
    assert values["f1_macro"] == pytest.approx(_macro_f1_over_present_labels(tp, fp, fn), abs=1e-6)
    owner = ours["f1_micro"]
    for name, value in {"tp": tp, "fp": fp, "tn": tn, "fn": fn}.items():
        assert getattr(owner, name).tolist() == value.tolist(), name
        assert getattr(ours["f1_macro"], name) is getattr(owner, name)
    reference = LabelCounts(k)
    for _, target in _label_batches(k, seed=k):
        reference.update(target)
    assert torch.equal(counts.positives, reference.positives)


def test_label_stats_equal_torchmetrics_stat_scores_and_exact_match():
    logits, target = next(_label_batches(5, seed=7))
    probs = torch.sigmoid(logits)
    probs[0, 0] = 0.5  # at the threshold: negative, as torchmetrics (strictly above)
    s = label_stats(probs, target)
    ref = MultilabelStatScores(5, average="none")
    ref.update(probs, target.long())
    tp, fp, tn, fn, _ = ref.compute().unbind(dim=-1)
    assert [s.tp.tolist(), s.fp.tolist(), s.tn.tolist(), s.fn.tolist()] == [
        tp.tolist(),
        fp.tolist(),
        tn.tolist(),
        fn.tolist(),
    ]
    exact = MultilabelExactMatch(5)
    exact.update(probs, target.long())
    assert int(s.exact) == round(float(exact.compute()) * target.shape[0]) and s.rows == 64


def test_stats_updates_equal_the_validated_updates():
    logits, target = next(_label_batches(4, seed=2))
    probs = torch.sigmoid(logits)
    for make in (lambda: MultilabelF1(4, average="micro"), lambda: MultilabelExact(4)):
        from_stats, validated = make(), make()
        from_stats.update(stats=label_stats(probs, target))
        validated.update(probs, target.long())
        assert from_stats.state_dict().keys() == validated.state_dict().keys()
        for key, value in validated.state_dict().items():
            assert torch.equal(from_stats.state_dict()[key], value), key
    with pytest.raises(ValueError, match="threshold"):
        MultilabelF1(4, threshold=0.3).update(stats=label_stats(probs, target))
    with pytest.raises(ValueError, match="preds and target, or stats"):
        MultilabelExact(4).update(probs)


@pytest.mark.parametrize(
    ("task", "owners"),
    [
        (TaskSpec("c", 3), ["acc"]),
        (TaskSpec("m", 3, kind="multilabel"), ["exact_match", "f1_micro"]),
    ],
)
def test_one_state_per_value_kind_and_only_owners_are_updated(task, owners):
    collection = task_metrics(task)
    assert sorted(k for k, m in collection.items() if m._defaults) == owners
    assert all(isinstance(m, SharedStates) for k, m in collection.items() if k not in owners)
    spies = {k: mock.patch.object(m, "update", wraps=m.update) for k, m in collection.items()}
    called = {k: spy.start() for k, spy in spies.items()}
    try:
        output = torch.randn(8, task.size)
        if task.is_classification:
            target = torch.randint(0, task.size, (8,))
        else:
            target = torch.rand(8, task.size).round()
        update_task_metrics(task, collection, output, target)
    finally:
        for spy in spies.values():
            spy.stop()
    assert sorted(k for k, c in called.items() if c.call_count) == owners
    assert all(c.call_count <= 1 for c in called.values())


def test_shared_metric_follows_its_source_through_reset_and_compute_cache():
    acc = ConfusionAccuracy(2)
    f1 = SharedConfusionF1(acc)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(f1.compute()))
    acc.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert f1.update_called and float(f1.compute()) == 1.0
    acc.update(torch.tensor([1, 1]), torch.tensor([0, 0]))  # not cached: reads the new matrix
    assert torch.equal(f1.compute(), f1_from_confusion(acc.confmat))
    f1.update(torch.tensor([0]), torch.tensor([0]))  # a no-op: the source counts batches
    assert int(acc.confmat.sum()) == 4
    acc.reset()
    assert not f1.update_called and int(f1.confmat.sum()) == 0
    with pytest.raises(NotImplementedError, match="no forward"):
        f1(torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="must own"):
        SharedConfusionF1(f1)  # type: ignore[arg-type]


def _legacy(task: TaskSpec) -> nn.Module:
    """The former collection: every value its own state."""
    k = task.size
    if task.is_classification:
        members = {"acc": ConfusionAccuracy(k), "balanced_acc": ConfusionBalancedAccuracy(k)}
        members["f1"] = ConfusionF1(k)
    else:
        members = {"f1_micro": MultilabelF1(k, average="micro")}
        members["f1_macro"] = MultilabelF1(k, average="macro")
        members["exact_match"] = MultilabelExact(k)
    return nn.ModuleDict(dict(sorted(members.items())))


def _fill(task: TaskSpec, shared, legacy) -> None:
    batches = _class_batches(task.size, 4) if task.is_classification else _label_batches(3, 4)
    for output, target in batches:
        update_task_metrics(task, shared, output, target)
        for metric in legacy.values():
            if task.is_classification:
                metric.update(output, target)
            else:
                metric.update(torch.sigmoid(output), target.long())


@pytest.mark.filterwarnings("ignore:.*was called before the ``update``")  # loaded, not updated
@pytest.mark.parametrize("task", [TaskSpec("c", 4), TaskSpec("m", 3, kind="multilabel")])
def test_checkpoints_keep_the_layout_of_a_state_per_metric(task):
    shared, legacy = nn.ModuleDict({"t": task_metrics(task)}), nn.ModuleDict({"t": _legacy(task)})
    for holder in (shared, legacy):
        for m in holder.modules():
            if hasattr(m, "persistent"):
                m.persistent(True)
    _fill(task, shared["t"], legacy["t"])
    saved, old = shared.state_dict(), legacy.state_dict()
    assert list(saved) == list(old)
    for key, value in old.items():
        assert torch.equal(saved[key], value), key
    # an old checkpoint loads strictly into the shared layout, and the reverse
    restored = nn.ModuleDict({"t": task_metrics(task)})
    restored.load_state_dict(old, strict=True)
    back = nn.ModuleDict({"t": _legacy(task)})
    back.load_state_dict(saved, strict=True)
    expected = {k: float(m.compute()) for k, m in legacy["t"].items()}
    for holder in (restored, back):
        got = {k: float(m.compute()) for k, m in holder["t"].items()}
        assert got == pytest.approx(expected, nan_ok=True)
    # not persistent: no copy either
    assert not nn.ModuleDict({"t": task_metrics(task)}).state_dict()


def test_rank_states_sum_and_zero_the_shared_copies():
    task = TaskSpec("c", 3)
    holder = nn.ModuleDict({"t": task_metrics(task), "n": training_counts(task)})
    for m in holder["t"].values():
        m.persistent(True)
    update_task_metrics(task, holder["t"], torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0]))
    saved = holder.state_dict()
    keys = checkpointed_metric_keys(holder, saved)
    assert keys == ["t.acc.confmat", "t.balanced_acc.confmat", "t.f1.confmat", "n.counts"]
    local = saved["t.acc.confmat"].clone()
    sum_metric_states(holder, saved, lambda t: 2 * t)  # two ranks holding the same
    for key in keys[:3]:
        assert torch.equal(saved[key], 2 * local), key
    assert torch.equal(holder["t"]["acc"].confmat, local)  # the live state is unchanged
    zero_metric_states(holder, saved)
    assert all(int(saved[k].sum()) == 0 for k in keys)
    assert isinstance(holder["n"], ClassCounts)


@pytest.mark.parametrize("task", [TaskSpec("c", 3), TaskSpec("m", 3, kind="multilabel")])
def test_copies_keep_the_sharing_within_the_copy(task):
    import copy
    import pickle

    collection = task_metrics(task)
    output, target = next(_class_batches(3, 0) if task.is_classification else _label_batches(3, 0))
    update_task_metrics(task, collection, output, target)
    shared = [k for k, m in collection.items() if isinstance(m, SharedStates)]
    for copied in (copy.deepcopy(collection), pickle.loads(pickle.dumps(collection))):
        assert _values(copied) == _values(collection)
        for key in shared:
            source = copied[key].source
            assert source is not collection[key].source
            assert any(source is member for member in copied.values())
