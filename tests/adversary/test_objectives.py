"""The trunk objectives against hand computations: HSIC with explicit centring matrices,
the cross-entropies by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtl_lightning.adversary import class_mmd, confusion_objective, reversal_objective


def _hsic_by_hand(z: torch.Tensor, y: torch.Tensor, k: int, bandwidth: float) -> torch.Tensor:
    """tr(K H L H) / n with H = I - 11^T / n and L_ij = 1[y_i = y_j] / n_{y_i}, in float64."""
    z = z.double()
    z = (z - z.mean(0)) / (z.std(0) + 1e-5)
    n = z.shape[0]
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    median = d2[~torch.eye(n, dtype=torch.bool)].median()
    kernel = torch.exp(-d2 / (bandwidth * median))
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    counts = torch.bincount(y, minlength=k).double()
    label = (y[:, None] == y[None, :]).double() / counts[y][:, None]
    return torch.trace(kernel @ h @ label @ h) / n


def test_class_mmd_equals_hsic_with_explicit_centring():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    z = z + F.one_hot(y, 6).float()  # some dependence
    for bandwidth in (0.5, 1.0, 2.0):
        expected = _hsic_by_hand(z, y, 4, bandwidth)
        got = class_mmd(z, y, 4, (bandwidth,))
        assert float(got) == pytest.approx(float(expected), rel=1e-4)
    both = class_mmd(z, y, 4, (0.5, 2.0))
    mean = (_hsic_by_hand(z, y, 4, 0.5) + _hsic_by_hand(z, y, 4, 2.0)) / 2
    assert float(both) == pytest.approx(float(mean), rel=1e-4)


def test_class_mmd_sees_a_shrunk_direction_and_falls_with_the_dependence():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(64) % 8
    z = torch.randn(64, 16, generator=g)
    leaky = z.clone()
    leaky[:, :4] += 3 * F.one_hot(y, 8)[:, :4].float()  # four of sixteen directions leak
    shrunk = leaky.clone()
    shrunk[:, :4] *= 1e-3  # the leaking directions scaled down: standardised, they are back
    assert float(class_mmd(shrunk, y, 8)) == pytest.approx(float(class_mmd(leaky, y, 8)), rel=1e-2)
    # the biased in-batch estimate has a floor of order 1 / n_c without any dependence
    assert float(class_mmd(leaky, y, 8)) > 1.3 * float(class_mmd(z, y, 8))


def test_class_mmd_has_a_gradient_and_is_zero_without_samples():
    z = torch.randn(16, 4, requires_grad=True)
    class_mmd(z, torch.arange(16) % 2, 2).backward()
    assert z.grad is not None and bool(z.grad.abs().sum() > 0)
    assert float(class_mmd(torch.randn(1, 4), torch.tensor([0]), 2)) == 0.0


def test_reversal_and_confusion_objectives_by_hand():
    logits = torch.tensor(
        [[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], [[0.5, 0.5, 0.5], [1.0, -2.0, 3.0]]]
    )
    target = torch.tensor([0, 2])
    log_p = torch.log_softmax(logits, -1)
    ce = -(log_p[0, 0, 0] + log_p[0, 1, 2] + log_p[1, 0, 0] + log_p[1, 1, 2]) / 4
    assert float(reversal_objective(logits, target)) == pytest.approx(-float(ce))
    uniform_ce = -log_p.mean()  # mean over attackers, samples and the 3 classes
    assert float(confusion_objective(logits)) == pytest.approx(float(uniform_ce) - math.log(3))
    assert float(confusion_objective(logits)) > 0
