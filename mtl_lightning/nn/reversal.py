"""Gradient reversal (Ganin & Lempitsky, 2015): identity forward, ``-lambda * grad`` backward."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class _GradientReversalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, lambda_: Tensor) -> Tensor:
        ctx.save_for_backward(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (lambda_,) = ctx.saved_tensors
        return -lambda_.to(grad_output.dtype) * grad_output, None


def gradient_reversal(x: Tensor, lambda_: float | Tensor = 1.0) -> Tensor:
    """Return ``x`` unchanged; in backward, multiply the incoming gradient by ``-lambda_``.

    Example:
        >>> x = torch.ones(3, requires_grad=True)
        >>> gradient_reversal(x, 0.5).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000, -0.5000])
    """
    if not isinstance(lambda_, Tensor):
        lambda_ = torch.tensor(float(lambda_), device=x.device)
    return _GradientReversalFunction.apply(x, lambda_.detach())


class GradientReversal(nn.Module):
    """Gradient reversal layer whose ``lambda_`` is a buffer (checkpointed, moved by ``.to()``).

    Heads placed behind it minimise their own loss while the layers in front of it receive
    ``-lambda_`` times that gradient, i.e. they are trained to *remove* the information.

    Example:
        >>> grl = GradientReversal(lambda_=2.0)
        >>> x = torch.ones(2, requires_grad=True)
        >>> grl(x).sum().backward()
        >>> x.grad
        tensor([-2., -2.])
        >>> "lambda_" in grl.state_dict()
        True
    """

    lambda_: Tensor

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("lambda_", torch.tensor(float(lambda_)))

    def set_lambda(self, value: float) -> None:
        """Set the reversal strength in place (keeps device and dtype)."""
        self.lambda_.fill_(float(value))

    def forward(self, x: Tensor) -> Tensor:
        return gradient_reversal(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={float(self.lambda_):.4g}"
