import pytest
import torch
import torch.nn.functional as F

from mtl_lightning import MultiTaskModule, TaskSpec
from mtl_lightning.metrics import ClassCounts, majority_rate, task_metrics
from mtl_lightning.nn import CNNTrunk

TASKS = [
    TaskSpec("emotion", 5, weight=2.0),
    TaskSpec("speaker", 11, role="adversarial", weight=0.5),
]


def _model(**kwargs):
    torch.manual_seed(0)
    return MultiTaskModule(
        TASKS, trunk=CNNTrunk(channels=(4, 4, 4), out_features=8, dropout=0.0), **kwargs
    )


def test_total_loss_is_the_static_weighted_sum():
    model = _model()
    x = torch.randn(6, 1, 16, 16)
    y = {"emotion": torch.tensor([0, 1, 2, 3, 4, 0]), "speaker": torch.tensor([0, 1, 2, 3, 4, 10])}
    model.eval()
    total = model.shared_step({"features": x, "targets": y}, 0, "val")
    out = model(x)
    expected = 2.0 * F.cross_entropy(out["emotion"], y["emotion"]) + 0.5 * F.cross_entropy(
        out["speaker"], y["speaker"]
    )
    torch.testing.assert_close(total, expected)


def test_adversarial_head_learns_while_trunk_gets_reversed_gradient():
    """Head gradient is the plain one; trunk gradient from the adversary is -lambda times it."""
    model = _model(grl_lambda=0.7)
    model.eval()
    x = torch.randn(4, 1, 16, 16)
    y = torch.tensor([1, 2, 3, 4])
    speaker = TASKS[1]

    def grads(lam):
        model.zero_grad()
        model.grl_lambda = lam
        F.cross_entropy(model(x)[speaker.name], y).backward()
        head = [p.grad.clone() for p in model.heads["speaker"].parameters()]
        trunk = [p.grad.clone() for p in model.trunk.parameters() if p.grad is not None]
        return head, trunk

    head_rev, trunk_rev = grads(0.7)
    # reference: the same model without reversal (plain gradient) via lambda=-1 (identity backward)
    head_plain, trunk_plain = grads(-1.0)
    for a, b in zip(head_rev, head_plain, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(trunk_rev, trunk_plain, strict=True):
        torch.testing.assert_close(a, -0.7 * b)
    head_zero, trunk_zero = grads(0.0)
    assert all(float(g.abs().max()) == 0.0 for g in trunk_zero)
    for a, b in zip(head_zero, head_plain, strict=True):
        torch.testing.assert_close(a, b)


def test_main_task_gradient_is_not_reversed():
    model = _model(grl_lambda=0.7)
    model.eval()
    x = torch.randn(4, 1, 16, 16)
    model.zero_grad()
    model(x)["emotion"].sum().backward()
    reference = [p.grad.clone() for p in model.trunk.parameters()]
    model.zero_grad()
    model.heads["emotion"](model.trunk(x)).sum().backward()
    for a, p in zip(reference, model.trunk.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


def test_predict_step_returns_classes_and_probabilities():
    model = _model()
    model.eval()
    out = model.predict_step({"features": torch.randn(3, 1, 16, 16)}, 0)
    assert out["emotion"]["pred"].shape == (3,)
    torch.testing.assert_close(out["speaker"]["prob"].sum(-1), torch.ones(3))


def test_trunk_without_out_features_is_rejected():
    with pytest.raises(TypeError, match="out_features"):
        MultiTaskModule(TASKS, trunk=torch.nn.Sequential(torch.nn.Flatten()))


def test_balanced_accuracy_has_chance_one_over_k_under_imbalance():
    # 90% of labels are class 0; always predicting 0 scores 0.9 accuracy but 1/3 balanced accuracy
    metrics = task_metrics(TaskSpec("t", 3))
    target = torch.cat([torch.zeros(18, dtype=torch.long), torch.tensor([1, 2])])
    preds = torch.zeros(20, 3)
    preds[:, 0] = 1.0
    metrics.update(preds, target)
    result = {k: float(v) for k, v in metrics.compute().items()}
    assert result["acc"] == pytest.approx(0.9)
    assert result["balanced_acc"] == pytest.approx(1 / 3)


def test_majority_rate():
    counts = ClassCounts(4)
    counts.update(torch.tensor([3, 3, 3, 1]))
    counts.update(torch.tensor([0, 3]))
    assert counts.counts.tolist() == [1, 1, 0, 4]
    assert float(majority_rate(counts.counts)) == pytest.approx(4 / 6)
    assert torch.isnan(majority_rate(torch.zeros(3)))
