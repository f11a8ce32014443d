"""`LinearEraser`: LEACE (Belrose et al., 2023) fitted in a stream, as a checkpointed module."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    # concept-erasure 0.2.4 decorates a helper with torch.jit.script, which torch >= 2.14
    # deprecates with a FutureWarning at import: not actionable for our users, printed by
    # every command otherwise
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from concept_erasure import LeaceFitter

ReduceSum = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


class LinearEraser(nn.Module):
    """An affine map ``x -> b + (x - b) P^T`` that removes every linear trace of a concept.

    :meth:`update` accumulates the first and second moments of the representation and the
    one-hot concept (float64 sums, so several DDP ranks' statistics add up exactly);
    :meth:`fit` hands them to ``concept_erasure.LeaceFitter``, whose eraser becomes the
    module's ``projection`` ``P`` and ``bias`` ``b`` (buffers, so checkpoints keep it) and
    starts a new accumulation. On the data it was fitted on, no linear classifier does better
    than a constant prediction. Until the first fit the module is the identity.

    Args:
        width: Width of the representation.
        num_classes: Classes of the concept.
        svd_tol: ``LeaceFitter``'s threshold on the whitened cross-covariance's singular values.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(300) % 3
        >>> x = torch.randn(300, 6, generator=g) + torch.nn.functional.one_hot(y, 6) * 2
        >>> eraser = LinearEraser(6, 3)
        >>> eraser.update(x, y); eraser.fit()
        >>> erased = eraser(x)
        >>> means = torch.stack([erased[y == c].mean(0) for c in range(3)])
        >>> bool((means - erased.mean(0)).abs().max() < 1e-4)  # class means coincide
        True
    """

    projection: Tensor
    bias: Tensor
    fitted: Tensor

    def __init__(self, width: int, num_classes: int, svd_tol: float = 0.01) -> None:
        super().__init__()
        self.width, self.num_classes, self.svd_tol = width, num_classes, svd_tol
        self.register_buffer("projection", torch.eye(width))
        self.register_buffer("bias", torch.zeros(width))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # This rank's running sums: not buffers, which DDP would overwrite with rank zero's at
        # every forward; checkpointed through the extra state (a resumed run fits on the same).
        self.sums = self._zeros(torch.device("cpu"))

    def _zeros(self, device: torch.device) -> dict[str, Tensor]:
        d, k = self.width, self.num_classes
        shapes = {"count": (), "sum_x": (d,), "sum_z": (k,), "sum_xx": (d, d), "sum_xz": (d, k)}
        return {n: torch.zeros(s, dtype=torch.float64, device=device) for n, s in shapes.items()}

    @torch.no_grad()
    def update(self, x: Tensor, target: Tensor) -> None:
        """Add a batch of representations ``[n, width]`` with class labels ``[n]``."""
        x = x.detach().double()
        z = nn.functional.one_hot(target.long(), self.num_classes).double()
        if self.sums["count"].device != x.device:
            self.sums = {n: v.to(x.device) for n, v in self.sums.items()}
        self.sums["count"] += x.shape[0]
        self.sums["sum_x"] += x.sum(0)
        self.sums["sum_z"] += z.sum(0)
        self.sums["sum_xx"] += x.T @ x
        self.sums["sum_xz"] += x.T @ z

    def _sums(self) -> list[Tensor]:
        return list(self.sums.values())

    def get_extra_state(self) -> dict[str, Tensor]:
        return {n: v.clone() for n, v in self.sums.items()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.sums = {n: v.clone().to(self.projection.device) for n, v in state.items()}

    @torch.no_grad()
    def fit(self, reduce_sum: ReduceSum = _identity) -> None:
        """Fit the eraser on the accumulated statistics (summed by ``reduce_sum``, e.g. over DDP
        ranks) and start a new accumulation; without two samples, keep the current eraser."""
        sums = [reduce_sum(s.clone()) for s in self._sums()]
        self.sums = self._zeros(self.projection.device)
        n, sx, sz, sxx, sxz = sums
        if float(n) < 2:
            return
        mean_x, mean_z = sx / n, sz / n
        fitter = LeaceFitter(
            self.width, self.num_classes, dtype=torch.float64, svd_tol=self.svd_tol
        )
        fitter.mean_x, fitter.mean_z = mean_x.cpu(), mean_z.cpu()
        fitter.n = n.long().cpu()
        fitter.sigma_xx_ = (sxx - n * torch.outer(mean_x, mean_x)).cpu()
        fitter.sigma_xz_ = (sxz - n * torch.outer(mean_x, mean_z)).cpu()
        eraser = fitter.eraser
        self.projection.copy_(eraser.P.to(self.projection))
        self.bias.copy_(mean_x.to(self.bias))
        self.fitted.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.fitted):
            return x
        bias = self.bias.to(x.dtype)
        return bias + (x - bias) @ self.projection.to(x.dtype).T

    def extra_repr(self) -> str:
        return f"width={self.width}, num_classes={self.num_classes}, fitted={bool(self.fitted)}"
