"""TAG lookahead affinity (Fifty et al., NeurIPS 2021) as pure tensor functions.

``Z[i, j] = 1 - L_j(theta_s - lr * g_i) / L_j(theta_s)``: the relative change of task ``j``'s loss
after a virtual step of the shared parameters along task ``i``'s gradient. Positive: ``i`` helps
``j``; negative: ``i`` hurts ``j``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

Params = Mapping[str, Tensor]


def affinity_from_losses(before: Tensor, after: Tensor, eps: float = 1e-12) -> Tensor:
    """Affinity matrix from losses before (``[T]``) and after each task's lookahead (``[T, T]``).

    ``after[i, j]`` is task ``j``'s loss after the step along task ``i``'s gradient.

    Example:
        >>> affinity_from_losses(torch.tensor([2.0, 4.0]), torch.tensor([[1.0, 5.0], [2.0, 3.0]]))
        tensor([[ 0.5000, -0.2500],
                [ 0.0000,  0.2500]])
    """
    if before.dim() != 1 or after.shape != (before.shape[0], before.shape[0]):
        raise ValueError(f"expected before [T] and after [T, T], got {before.shape}, {after.shape}")
    return 1.0 - after / before.clamp_min(eps)[None, :]


def cosine_matrix(gradients: Tensor, eps: float = 1e-12) -> Tensor:
    """Pairwise cosine similarity of flattened per-task gradients ``[T, P]`` -> ``[T, T]``.

    Example:
        >>> cosine_matrix(torch.tensor([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0]]))
        tensor([[ 1., -1.,  0.],
                [-1.,  1.,  0.],
                [ 0.,  0.,  1.]])
    """
    unit = gradients / gradients.norm(dim=1, keepdim=True).clamp_min(eps)
    return unit @ unit.T


def lookahead_losses(
    loss_fn: Callable[[Params], Tensor],
    shared: Params,
    gradients: Sequence[Params],
    lr: float,
) -> Tensor:
    """Every task's loss after a virtual step ``shared - lr * gradients[i]``, for each ``i``.

    Args:
        loss_fn: Maps a dict of shared parameters to the ``[T]`` vector of task losses (with the
            task-specific parameters held fixed); it must not modify anything it is given.
        shared: The current shared parameters.
        gradients: Per source task ``i``, the gradient of its loss w.r.t. each shared parameter.
        lr: Step size of the virtual step.

    Returns:
        ``[S, T]``: row ``i`` holds the ``T`` losses after the step along source ``i``.

    Example:
        >>> w = {"w": torch.tensor(1.0)}
        >>> fn = lambda p: torch.stack([(p["w"] - 3) ** 2, (p["w"] + 1) ** 2])
        >>> g = [{"w": torch.tensor(-4.0)}, {"w": torch.tensor(4.0)}]  # d/dw of each loss at w=1
        >>> lookahead_losses(fn, w, g, lr=0.25)
        tensor([[1., 9.],
                [9., 1.]])
    """
    rows = []
    with torch.no_grad():
        for grads in gradients:
            stepped = {name: p - lr * grads[name] for name, p in shared.items()}
            rows.append(loss_fn(stepped))
    return torch.stack(rows)
