"""Flat gradient vectors for the gradient path: taken from autograd, packed for one DDP
all-reduce and split back, their Gramian, the name of whatever is not finite, and the write
into ``.grad``. Pure but for the ``reduce_mean`` collective the caller hands in (identity in
one process), so all of it is testable without DDP."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl_lightning.nonfinite import finite_gradients
from mtl_lightning.tasks import TaskSpec

__all__ = [
    "ReducedGradients",
    "aggregated_tasks",
    "batched_flat_grads",
    "cosine_matrix",
    "culprit_message",
    "flat_grad",
    "gram_matrix",
    "reduce_gramian",
    "reduce_jacobian",
    "reduce_packed",
    "trunk_jacobian",
    "write_grads",
]

Reduce = Callable[[Tensor], Tensor]


def _identity(tensor: Tensor) -> Tensor:
    return tensor


def aggregated_tasks(tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """The tasks whose gradients a strategy weights (the rows of the Jacobian): the main tasks
    with a positive weight. Adversaries are added to the trunk's update afterwards.

    Example:
        >>> tasks = [TaskSpec("a", 2), TaskSpec("off", 2, weight=0.0),
        ...          TaskSpec("s", 3, role="adversarial")]
        >>> [t.name for t in aggregated_tasks(tasks)]
        ['a']
    """
    return [t for t in tasks if not t.adversarial and t.weight > 0]


def flat_grad(
    output: Tensor,
    inputs: Sequence[Tensor],
    grad_output: Tensor | None = None,
    retain_graph: bool = True,
) -> Tensor:
    """Gradient of ``output`` (weighted by ``grad_output``) w.r.t. ``inputs``, flattened.

    Inputs that ``output`` does not depend on contribute zeros.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> b = torch.tensor(3.0, requires_grad=True)
        >>> flat_grad((w * w).sum(), [w, b])
        tensor([2., 4., 0.])
    """
    grads = torch.autograd.grad(
        output, list(inputs), grad_outputs=grad_output, retain_graph=retain_graph, allow_unused=True
    )
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, inputs, strict=True)
        ]
    )


def batched_flat_grads(output: Tensor, inputs: Sequence[Tensor], rows: Sequence[Tensor]) -> Tensor:
    """The ``[K, P]`` matrix whose row ``k`` is ``flat_grad(output, inputs, rows[k])``, from one
    backward pass of the ``K`` vector-Jacobian products together (autograd's
    ``is_grads_batched``: the pass is vmapped over the rows) instead of ``K`` passes, and one
    copy into the matrix. Inputs that ``output`` does not depend on contribute zeros.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> y = w * w
        >>> batched_flat_grads(y, [w], [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
        tensor([[2., 0.],
                [0., 4.]])
    """
    k = len(rows)
    grads = torch.autograd.grad(
        output,
        list(inputs),
        grad_outputs=torch.stack(list(rows)),
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    return torch.cat(
        [
            (g if g is not None else p.new_zeros((k, *p.shape))).reshape(k, -1)
            for g, p in zip(grads, inputs, strict=True)
        ],
        dim=1,
    )


def trunk_jacobian(
    output: Tensor, inputs: Sequence[Tensor], rows: Sequence[Tensor], batched: bool
) -> Tensor:
    """The ``[K, P]`` Jacobian of ``inputs`` whose row ``k`` is ``flat_grad(output, inputs,
    rows[k])``: from one vmapped pass (``batched``, :func:`batched_flat_grads`) or ``K``
    passes, stacked.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> rows = [torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])]
        >>> torch.equal(trunk_jacobian(w * w, [w], rows, True), trunk_jacobian(w * w, [w], rows, False))
        True
    """
    if batched:
        return batched_flat_grads(output, inputs, rows)
    return torch.stack([flat_grad(output, inputs, r) for r in rows])


def write_grads(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Write a flat gradient vector into ``.grad`` of ``params`` (in order).

    Example:
        >>> p = nn.Parameter(torch.zeros(2, 2))
        >>> write_grads([p], torch.arange(4.0))
        >>> p.grad
        tensor([[0., 1.],
                [2., 3.]])
    """
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    if offset != flat.numel():
        raise ValueError(f"gradient vector has {flat.numel()} entries for {offset} parameters")


def gram_matrix(rows: Tensor) -> Tensor:
    """``rows @ rows.T`` in at least float32, also inside an autocast region (where a matmul
    would run in bf16 or fp16 and round every entry).

    Example:
        >>> rows = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     gram_matrix(rows)
        tensor([[5., 6.],
                [6., 9.]])
    """
    dtype = torch.promote_types(rows.dtype, torch.float32)
    with torch.autocast(device_type=rows.device.type, enabled=False):
        return rows.to(dtype) @ rows.to(dtype).T


def cosine_matrix(gramian: Tensor, eps: float = 1e-20) -> Tensor:
    """Pairwise cosine similarities from a Gramian; NaN where a gradient is zero.

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
        >>> cosine_matrix(g @ g.T)
        tensor([[ 1.0000, -0.7071],
                [-0.7071,  1.0000]])
    """
    norms = gramian.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > eps, gramian / denom.clamp_min(eps), torch.nan)


def reduce_packed(
    parts: Sequence[Tensor], reduce_mean: Reduce = _identity
) -> tuple[Tensor, list[Tensor]]:
    """One collective for several flat tensors: concatenated, reduced, split back (views of
    the reduced vector, which comes first).

    Example:
        >>> packed, (a, b) = reduce_packed([torch.ones(2), torch.zeros(1)], lambda t: 2 * t)
        >>> packed, a, b
        (tensor([2., 2., 0.]), tensor([2., 2.]), tensor([0.]))
    """
    packed = reduce_mean(torch.cat(list(parts)))
    return packed, list(torch.split(packed, [p.numel() for p in parts]))


def culprit_message(
    names: Sequence[str], per_task: Sequence[float], heads_bad: bool, adversaries_bad: bool
) -> str:
    """What is not finite, for the non-finite policy's message: the tasks whose ``per_task``
    value is not (any non-finite entry of a task's gradient or loss makes it so), the
    adversaries' reversed gradient, the heads' gradient; else the Gramian overflowed.

    Example:
        >>> culprit_message(["a", "b", "c"], [1.0, float("nan"), float("inf")], True, False)
        "gradient from task(s) 'b', 'c' and gradient of the heads"
        >>> culprit_message(["a"], [1.0], False, False)
        'per-task gradients (Gramian overflow)'
    """
    bad = [n for n, v in zip(names, per_task, strict=True) if not math.isfinite(v)]
    parts = [f"gradient from task(s) {', '.join(map(repr, bad))}"] if bad else []
    if adversaries_bad:
        parts.append("adversaries' reversed gradient")
    if heads_bad:
        parts.append("gradient of the heads")
    return " and ".join(parts) or "per-task gradients (Gramian overflow)"


@dataclass
class ReducedGradients:
    """The per-task gradients as the strategy sees them: means over DDP ranks, from one
    all-reduce (:func:`reduce_gramian` at ``level="rep"``, :func:`reduce_jacobian` at
    ``level="shared"``).

    Attributes:
        packed: The reduced vector, checked for non-finite entries before the strategy sees it.
        gramian: ``[K, K]`` Gramian of the ``K`` aggregated tasks' gradients.
        losses: ``[K]`` their losses.
        jacobian: ``"shared"``: the ``[K, P]`` gradients of the trunk's parameters (still
            carrying the loss scale); ``"rep"``: None.
        extra: ``"shared"``: the trunk gradient of the objectives added after aggregation
            (adversaries).
        heads: ``"shared"``: the heads' gradient (``"rep"`` reduces it with the trunk's update).
        flags: ``"rep"``: ``[heads, extra]``, non-zero where a rank's gradient is not finite.
        rows: ``"rep"``: this rank's gradients of the embedding, unscaled (local: the cosines'
            input).
    """

    packed: Tensor
    gramian: Tensor
    losses: Tensor
    jacobian: Tensor | None = None
    extra: Tensor | None = None
    heads: Tensor | None = None
    flags: Tensor | None = None
    rows: Tensor | None = None

    def culprit(self, names: Sequence[str]) -> str | None:
        """None when everything reduced is finite; else :func:`culprit_message`, ``names``
        being the aggregated tasks'. The same on every rank (it reads reduced values only).

        Example:
            >>> rows = torch.tensor([[1.0, 0.0], [float("inf"), 0.0]])
            >>> reduced = reduce_gramian(rows, torch.ones(2), [torch.zeros(1), torch.zeros(0)])
            >>> reduced.culprit(["a", "b"])
            "gradient from task(s) 'b'"
            >>> print(reduce_gramian(rows[:1], torch.ones(1), [torch.zeros(0)] * 2).culprit(["a"]))
            None
        """
        if self.flags is not None:  # level "rep"
            if bool(torch.isfinite(self.packed).all() & (self.flags == 0).all()):
                return None
            per_task = self.gramian.diagonal() + self.losses
            heads_bad, extra_bad = bool(self.flags[0] != 0), bool(self.flags[1] != 0)
            return culprit_message(names, per_task.tolist(), heads_bad, extra_bad)
        assert self.jacobian is not None and self.heads is not None and self.extra is not None
        if finite_gradients([self.packed, self.gramian]):
            return None
        per_task = self.jacobian.sum(1) + self.gramian.diagonal() + self.losses
        return culprit_message(
            names,
            per_task.tolist(),
            not bool(torch.isfinite(self.heads).all()),
            not bool(torch.isfinite(self.extra).all()),
        )


def reduce_gramian(
    rows: Tensor,
    losses: Tensor,
    side: Sequence[Tensor],
    reduce_mean: Reduce = _identity,
    world: int = 1,
) -> ReducedGradients:
    """``level="rep"``: this rank's Gramian of the ``[K, D]`` embedding-gradient ``rows``, the
    ``[K]`` losses and a non-finite flag per ``side`` tensor (what the strategy does not see:
    the heads' and the adversaries' gradients, flagged so that every rank takes the same
    branch), in one all-reduce. Each rank's loss is its shard's mean, so the global Gramian
    is ``sum_r G_r / R^2``: the mean over the ``world`` ranks, divided by ``world``.

    Example:
        >>> rows = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
        >>> r = reduce_gramian(rows, torch.tensor([0.5, 0.25]), [torch.ones(3), torch.zeros(0)])
        >>> r.gramian, r.losses, r.flags
        (tensor([[5., 6.],
                [6., 9.]]), tensor([0.5000, 0.2500]), tensor([0., 0.]))
    """
    local = rows @ rows.T
    flags = torch.stack([(~torch.isfinite(s)).any() for s in side]).float()
    packed, (gramian, losses_r, flags_r) = reduce_packed(
        [local.flatten(), losses, flags], reduce_mean
    )
    k = rows.shape[0]
    return ReducedGradients(packed, gramian.view(k, k) / world, losses_r, flags=flags_r, rows=rows)


def reduce_jacobian(
    jacobian: Tensor,
    losses: Tensor,
    extra: Tensor,
    heads: Tensor,
    reduce_mean: Reduce = _identity,
    scale: float = 1.0,
) -> ReducedGradients:
    """``level="shared"``: the ``[K, P]`` Jacobian of the trunk's parameters, the ``[K]``
    losses, the trunk gradient of the ``extra`` objectives (``[P]``) and the heads' gradient,
    in one all-reduce; the Gramian is computed from the reduced Jacobian, the loss ``scale``
    (which the gradients carry) divided out.

    Example:
        >>> jac = torch.tensor([[2.0, 0.0], [0.0, 4.0]])  # gradients carrying a scale of 2
        >>> r = reduce_jacobian(jac, torch.ones(2), torch.zeros(2), torch.ones(1), scale=2.0)
        >>> r.gramian, torch.equal(r.jacobian, jac), r.heads
        (tensor([[1., 0.],
                [0., 4.]]), True, tensor([1.]))
    """
    packed, (jac_r, losses_r, extra_r, heads_r) = reduce_packed(
        [jacobian.flatten(), losses, extra, heads], reduce_mean
    )
    jac_r = jac_r.view(jacobian.shape[0], -1)
    gramian = (jac_r @ jac_r.T) / (scale * scale)
    return ReducedGradients(packed, gramian, losses_r, jacobian=jac_r, extra=extra_r, heads=heads_r)
