"""The confusion adversary: the head learns normally, the trunk is pushed towards a uniform head."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtl_lightning import MultiTaskModule, TaskSpec
from mtl_lightning.nn import CNNTrunk
from mtl_lightning.training.losses import uniform_cross_entropy

TASKS = [TaskSpec("emotion", 3), TaskSpec("speaker", 4, role="adversarial", adversary="confusion")]


def _model():
    torch.manual_seed(0)
    model = MultiTaskModule(TASKS, trunk=CNNTrunk(channels=(4, 4, 4), out_features=8, dropout=0.0))
    return model.eval()


def test_uniform_cross_entropy_hand_values():
    assert float(uniform_cross_entropy(torch.zeros(2, 4))) == pytest.approx(math.log(4))
    # logits [log 1, log 3] -> p = [0.25, 0.75]; CE to uniform = -(log .25 + log .75) / 2
    logits = torch.log(torch.tensor([[1.0, 3.0]]))
    expected = -(math.log(0.25) + math.log(0.75)) / 2
    assert float(uniform_cross_entropy(logits)) == pytest.approx(expected)


def test_confusion_term_trains_only_the_trunk_and_matches_autograd():
    model = _model()
    x = torch.randn(5, 1, 16, 16)
    loss = model.confusion_losses(model.embed(x))["speaker"]
    loss.backward()
    assert all(p.grad is None for p in model.heads["speaker"].parameters())
    got = [p.grad.clone() for p in model.trunk.parameters()]
    # independent computation: the same objective with an ordinary (non-frozen) head,
    # differentiated with respect to the trunk parameters only
    model.zero_grad(set_to_none=True)
    reference = -F.log_softmax(model.heads["speaker"](model.trunk(x)), -1).mean() - math.log(4)
    torch.testing.assert_close(loss, reference)
    grads = torch.autograd.grad(reference, list(model.trunk.parameters()))
    for a, b in zip(got, grads, strict=True):
        torch.testing.assert_close(a, b)


def test_confusion_head_loss_does_not_reach_the_trunk():
    model = _model()
    x = torch.randn(5, 1, 16, 16)
    out = model(x)
    F.cross_entropy(out["speaker"], torch.tensor([0, 1, 2, 3, 0])).backward()
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is not None for p in model.heads["speaker"].parameters())


def test_total_adds_lambda_times_confusion():
    model = _model()
    model.grl_lambda = 0.3
    x = torch.randn(4, 1, 16, 16)
    y = {"emotion": torch.tensor([0, 1, 2, 0]), "speaker": torch.tensor([0, 1, 2, 3])}
    total = model.shared_step({"features": x, "targets": y}, 0, "val")
    out = model(x)
    expected = (
        F.cross_entropy(out["emotion"], y["emotion"])
        + F.cross_entropy(out["speaker"], y["speaker"])
        + 0.3 * model.confusion_losses(model.embed(x))["speaker"]
    )
    torch.testing.assert_close(total, expected)


def test_confusion_needs_classification():
    with pytest.raises(ValueError, match="confusion adversary needs classification"):
        TaskSpec("age", 1, kind="regression", role="adversarial", adversary="confusion")


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")
def test_confusion_gradient_matches_the_hand_derived_closed_form():
    """d/dz of mean_n CE(softmax(z_n), uniform over K) is (softmax(z) - 1/K) / N (the constant
    -log K does not change it); the trunk objective is lambda * weight * that loss, and with a
    linear head z = e W^T + b the embedding receives (lambda * weight * dL/dz) @ W."""
    torch.manual_seed(0)
    n, k, width, lam, weight = 5, 4, 8, 0.3, 0.5
    tasks = [
        TaskSpec("emotion", 3),
        TaskSpec("speaker", k, role="adversarial", adversary="confusion", weight=weight),
    ]
    model = MultiTaskModule(
        tasks, trunk=CNNTrunk(channels=(4, 4, 4), out_features=width), head_hidden=0
    ).eval()
    model.grl_lambda = lam
    head = model.heads["speaker"].net
    assert isinstance(head, torch.nn.Linear)
    captured = []

    def keep_logits(module, inputs, output):
        output.retain_grad()
        captured.append(output)

    handle = head.register_forward_hook(keep_logits)
    embedding = torch.randn(n, width, requires_grad=True)
    total = model.confusion_total(embedding, "val", n)  # no trainer: its self.log is a no-op
    handle.remove()
    total.backward()

    [logits] = captured
    with torch.no_grad():
        z = embedding @ head.weight.T + head.bias
        p = z.exp() / z.exp().sum(-1, keepdim=True)
        expected_logits_grad = lam * weight * (p - 1.0 / k) / n
    torch.testing.assert_close(logits.detach(), z)
    torch.testing.assert_close(logits.grad, expected_logits_grad)
    torch.testing.assert_close(embedding.grad, expected_logits_grad @ head.weight.detach())
    # the loss value itself: lambda * weight * (-mean log p - log K)
    expected_value = lam * weight * (-p.log().mean() - math.log(k))
    torch.testing.assert_close(total.detach(), expected_value)
    # the head learns nothing from the confusion term
    assert all(p.grad is None for p in model.heads["speaker"].parameters())
