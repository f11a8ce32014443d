import pytest
import torch

from mtl_lightning.nn import GradientReversal, gradient_reversal


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_reversed_gradient_is_minus_lambda_times_plain_gradient(lam):
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, dtype=torch.float64)

    def f(z):
        return (torch.tanh(z @ w) ** 2).sum()

    (plain,) = torch.autograd.grad(f(x), x)
    (reversed_,) = torch.autograd.grad(f(gradient_reversal(x, lam)), x)
    torch.testing.assert_close(reversed_, -lam * plain)


def test_forward_is_identity_even_at_lambda_zero():
    x = torch.randn(3, 5)
    grl = GradientReversal(0.0)
    torch.testing.assert_close(grl(x), x, rtol=0, atol=0)
    grl.set_lambda(0.7)
    torch.testing.assert_close(grl(x), x, rtol=0, atol=0)


def test_lambda_is_a_checkpointed_buffer_that_moves_with_to():
    grl = GradientReversal(0.25)
    assert "lambda_" in dict(grl.named_buffers())
    state = grl.state_dict()
    other = GradientReversal(1.0)
    other.load_state_dict(state)
    assert float(other.lambda_) == 0.25
    moved = grl.to(torch.float64)
    assert moved.lambda_.dtype == torch.float64
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    moved(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2,), -0.25, dtype=torch.float64))


def test_only_the_path_through_the_layer_is_reversed():
    x = torch.ones(2, requires_grad=True)
    grl = GradientReversal(1.0)
    (3 * x + 2 * grl(x)).sum().backward()  # direct path +3, reversed path -2
    torch.testing.assert_close(x.grad, torch.ones(2))
