"""The fused per-batch metric update (`mtl_lightning.metrics.fused`) against the metrics' own
updates, task by task: the same states, bit for bit."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.metrics import (
    ClassCounts,
    ConfusionAccuracy,
    LossMean,
    confusion_counts,
    update_task_metrics,
)
from mtl_lightning.metrics.fused import (
    CountLayout,
    add_loss_means,
    add_to_states,
    classification_counts,
)
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.training.progress import StepOutputs
from mtl_lightning.training.stage_metrics import STAGES, TOTAL_KEY, StageMetrics

CPU = torch.device("cpu")


@pytest.mark.parametrize("with_labels", [True, False])
def test_classification_counts_are_each_tasks_confusion_and_label_counts(with_labels):
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        sizes = torch.randint(2, 7, (int(torch.randint(1, 5, (1,), generator=gen)),),
                              generator=gen).tolist()  # fmt: skip
        n = int(torch.randint(1, 40, (1,), generator=gen))
        outputs = [torch.randn(n, k, generator=gen) for k in sizes]
        masks = torch.rand(len(sizes), n, generator=gen) > 0.3
        targets = [
            torch.where(m, torch.randint(0, k, (n,), generator=gen), -100)
            for k, m in zip(sizes, masks, strict=True)
        ]
        layout = CountLayout.build(sizes, with_labels, CPU)
        confusions, labels = classification_counts(layout, outputs, targets, masks)
        for i, k in enumerate(sizes):
            expected = confusion_counts(outputs[i][masks[i]], targets[i][masks[i]], k)
            assert torch.equal(confusions[i], expected)
            if with_labels:
                assert torch.equal(labels[i], torch.bincount(targets[i][masks[i]], minlength=k))
        assert labels == [] or with_labels


def test_a_class_index_beyond_the_last_tasks_range_is_an_error():
    layout = CountLayout.build((2, 3), False, CPU)
    with pytest.raises(ValueError, match=r"beyond its task's range \(sizes \(2, 3\)\)"):
        classification_counts(layout, [torch.zeros(1, 2), torch.zeros(1, 3)],
                              [torch.tensor([0]), torch.tensor([7])],
                              torch.ones(2, 1, dtype=torch.bool))  # fmt: skip


def test_loss_means_equal_the_metrics_own_updates_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    fused, own = [LossMean() for _ in range(4)], [LossMean() for _ in range(4)]
    for _ in range(30):
        losses = torch.rand(4, generator=gen) * 3
        labelled = torch.randint(0, 65, (4,), generator=gen)
        assert add_loss_means(fused, losses, labelled)
        for metric, loss, count in zip(own, losses, labelled.tolist(), strict=True):
            if count:
                metric.update(loss, count)
    for a, b in zip(fused, own, strict=True):
        assert torch.equal(a.mean_value, b.mean_value) and torch.equal(a.weight, b.weight)
        assert torch.equal(a.compute(), b.compute())


def test_a_non_finite_loss_or_mixed_dtypes_add_nothing():
    metrics = [LossMean(), LossMean()]
    assert not add_loss_means(metrics, torch.tensor([1.0, float("nan")]), torch.tensor([2, 2]))
    assert all(m.update_count == 0 and float(m.weight) == 0 for m in metrics)
    metrics[1].set_dtype(torch.float64)
    assert not add_loss_means(metrics, torch.tensor([1.0, 2.0]), torch.tensor([2, 2]))
    assert all(m.update_count == 0 for m in metrics)


def test_add_to_states_counts_each_update_and_drops_the_cached_value():
    acc, counts = ConfusionAccuracy(2), ClassCounts(2)
    add_to_states([(acc, "confmat"), (counts, "counts")],
                  [torch.tensor([[1, 0], [0, 1]]), torch.tensor([1, 1])])  # fmt: skip
    assert float(acc.compute()) == 1.0 and acc.update_count == 1 and counts.update_count == 1
    add_to_states([(acc, "confmat")], [torch.tensor([[0, 2], [0, 0]])])
    assert float(acc.compute()) == 0.5 and acc.update_count == 2  # not the cached 1.0


TASKS = [
    TaskSpec("a", 3),
    TaskSpec("reg", 1, kind="regression"),
    TaskSpec("b", 2, role="adversarial"),
    TaskSpec("tags", 3, kind="multilabel"),
    TaskSpec("c", 4),
]


def _step(gen: torch.Generator, n: int = 16) -> StepOutputs:
    outputs, targets, masks, losses = {}, {}, {}, {}
    for task in TASKS:
        k = task.size
        outputs[task.name] = torch.randn(n, k, generator=gen)
        mask = torch.rand(n, generator=gen) > 0.25
        if task.is_classification:
            target = torch.where(mask, torch.randint(0, k, (n,), generator=gen), -100)
        elif task.is_multilabel:
            target = (torch.rand(n, k, generator=gen) > 0.5).float()
            target[~mask] = float("nan")
        else:
            target = torch.where(mask, torch.randn(n, generator=gen), float("nan"))
        targets[task.name], masks[task.name] = target, mask
        losses[task.name] = torch.rand((), generator=gen)
    return StepOutputs(torch.zeros(n, 1), targets, masks, torch.zeros(n, 2), outputs, losses)


def _own_updates(
    metrics: StageMetrics, stage: str, step: StepOutputs, total: float | None = 1.5
) -> None:
    """What StageMetrics.update did task by task before the fused update (the total: unless
    None, an update of ``total`` weighted by the batch size)."""
    for task in metrics.tasks:
        name, mask = task.name, step.masks[task.name]
        labelled = int(mask.sum())
        if labelled:
            metrics.stage_losses[f"{stage}_losses"][name].update(step.losses[name], labelled)
            counts = metrics.train_class_counts[name] if stage == "train" and (
                name in metrics.train_class_counts) else None  # fmt: skip
            update_task_metrics(task, metrics.stage_metrics[f"{stage}_metrics"][name],
                                step.outputs[name][mask], step.targets[name][mask], counts)  # fmt: skip
    if total is not None:
        n = next(iter(step.masks.values())).shape[0]
        metrics.stage_losses[f"{stage}_losses"][TOTAL_KEY].update(torch.tensor(total), n)


def test_stage_metrics_update_equals_the_task_by_task_updates():
    fused, own = StageMetrics(TASKS), StageMetrics(TASKS)
    gen = torch.Generator().manual_seed(2)
    for _ in range(6):
        for stage in STAGES:
            step = _step(gen)
            fused.update(stage, step, torch.tensor(1.5), log=lambda *a, **k: None)
            _own_updates(own, stage, step)
    expected = own.state_dict()
    assert fused.state_dict().keys() == expected.keys()
    for key, value in fused.state_dict().items():
        assert torch.equal(value, expected[key]), key
    for stage in STAGES:
        assert fused.values(stage) == own.values(stage)


def test_the_training_step_value_equals_the_total_metrics_forward():
    """``train/loss_step``: the value the fused update caches for Lightning equals what
    ``Metric.forward`` returned before, bit for bit, on batch sizes that are not powers of two
    (where ``(v * n) / n`` need not round back to ``v``); the states are those of the forward
    path, and a non-finite total still goes through ``forward`` (which warns)."""
    fused, own = StageMetrics(TASKS), StageMetrics(TASKS)
    gen = torch.Generator().manual_seed(3)
    logged = {}

    def log(name, value, **kwargs):
        logged[name] = value

    for n in (48, 37, 64, 5, 48):
        step, total = _step(gen, n), torch.rand((), generator=gen) * 7
        fused.update("train", step, total, log=log, step_value=True)
        _own_updates(own, "train", step, total=None)
        expected = own.stage_losses["train_losses"][TOTAL_KEY](total, n)
        assert torch.equal(logged["train/loss"]._forward_cache, expected), n
    for key, value in fused.state_dict().items():
        assert torch.equal(value, own.state_dict()[key]), key
    assert fused.values("train") == own.values("train")
    with pytest.warns(UserWarning, match="nan"):
        fused.update("train", _step(gen, 8), torch.tensor(float("nan")), log=log, step_value=True)
    assert logged["train/loss"]._forward_cache.isnan()
