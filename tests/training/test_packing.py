"""The gradient path's pure helpers: one all-reduce packed and split back, the Gramians it
yields, and the naming of whatever is not finite, checked without DDP."""

import math

import pytest
import torch
from torch import nn

from mtl_lightning.training.packing import (
    culprit_message,
    flat_grad,
    reduce_gramian,
    reduce_jacobian,
    reduce_packed,
    write_grads,
)

NAN, INF = float("nan"), float("inf")


def test_reduce_packed_round_trip_keeps_every_part():
    parts = [torch.arange(6.0), torch.tensor([7.0]), torch.zeros(0), torch.tensor([-1.0, 2.0])]
    packed, back = reduce_packed(parts)
    assert packed.shape == (9,)
    assert len(back) == len(parts)
    for got, want in zip(back, parts, strict=True):
        assert torch.equal(got, want)


def test_reduce_packed_reduces_once():
    calls = []

    def reduce_mean(t):
        calls.append(t.clone())
        return t / 2

    _, (a, b) = reduce_packed([torch.ones(2), torch.full((1,), 4.0)], reduce_mean)
    assert len(calls) == 1 and calls[0].tolist() == [1.0, 1.0, 4.0]
    assert a.tolist() == [0.5, 0.5] and b.tolist() == [2.0]


def test_reduce_jacobian_round_trip_and_scaled_gramian():
    jac = torch.tensor([[3.0, 0.0, 4.0], [0.0, 2.0, 0.0]])  # carrying a loss scale of 2
    losses, extra, heads = torch.tensor([0.5, 1.5]), torch.tensor([1.0, 2.0, 3.0]), torch.ones(4)
    r = reduce_jacobian(jac, losses, extra, heads, scale=2.0)
    assert torch.equal(r.jacobian, jac)
    assert torch.equal(r.losses, losses) and torch.equal(r.extra, extra)
    assert torch.equal(r.heads, heads)
    # by hand: J J^T = [[25, 0], [0, 4]], over scale^2 = 4
    assert r.gramian.tolist() == [[6.25, 0.0], [0.0, 1.0]]
    assert r.culprit(["a", "b"]) is None


def test_reduce_gramian_is_the_mean_of_rank_gramians_over_the_world():
    """Two ranks, each with the gradients of its shard's mean losses: the Gramian the strategy
    sees is ``(G_0 + G_1) / R^2`` (``R = 2``), from one all-reduce (a mean) of the packed
    vector, and the losses are the ranks' mean."""
    rows = [torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[3.0, 0.0], [1.0, -1.0]])]
    losses = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    side = [torch.zeros(3), torch.zeros(0)]
    local = [
        torch.cat([(r @ r.T).flatten(), loss, torch.zeros(2)])
        for r, loss in zip(rows, losses, strict=True)
    ]
    mean = (local[0] + local[1]) / 2

    def reduce_mean(t):  # what rank 0 gets back from the all-reduce
        assert torch.equal(t, local[0])
        return mean

    r = reduce_gramian(rows[0], losses[0], side, reduce_mean, world=2)
    torch.testing.assert_close(r.gramian, (rows[0] @ rows[0].T + rows[1] @ rows[1].T) / 4)
    assert r.losses.tolist() == [2.0, 3.0]
    assert torch.equal(r.rows, rows[0])  # local, for the cosines
    assert r.culprit(["a", "b"]) is None


def test_culprit_message_names_tasks_adversaries_and_heads():
    names = ["a", "b", "c"]
    assert culprit_message(names, [1.0, NAN, 2.0], False, False) == "gradient from task(s) 'b'"
    assert (
        culprit_message(names, [INF, 0.0, NAN], True, True)
        == "gradient from task(s) 'a', 'c' and adversaries' reversed gradient and gradient of "
        "the heads"
    )
    assert culprit_message(names, [1.0, 2.0, 3.0], True, False) == "gradient of the heads"
    assert culprit_message(names, [1.0, 2.0, 3.0], False, False) == (
        "per-task gradients (Gramian overflow)"
    )
    with pytest.raises(ValueError):  # one value per task
        culprit_message(names, [1.0], False, False)


def test_shared_level_culprit_by_hand():
    # task b's gradient has a NaN entry; the adversaries' (extra) gradient an inf
    jac = torch.tensor([[1.0, 0.0], [NAN, 1.0]])
    r = reduce_jacobian(jac, torch.ones(2), torch.tensor([INF, 0.0]), torch.zeros(3))
    assert r.culprit(["a", "b"]) == "gradient from task(s) 'b' and adversaries' reversed gradient"
    # only the heads: no task named
    r = reduce_jacobian(torch.eye(2), torch.ones(2), torch.zeros(2), torch.tensor([NAN]))
    assert r.culprit(["a", "b"]) == "gradient of the heads"
    # a non-finite loss names its task too
    r = reduce_jacobian(torch.eye(2), torch.tensor([1.0, INF]), torch.zeros(2), torch.zeros(1))
    assert r.culprit(["a", "b"]) == "gradient from task(s) 'b'"


def test_rep_level_culprit_reads_the_flags_of_what_the_strategy_does_not_see():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    heads_bad = reduce_gramian(rows, torch.ones(2), [torch.tensor([NAN]), torch.zeros(1)])
    assert heads_bad.flags.tolist() == [1.0, 0.0]
    assert heads_bad.culprit(["a", "b"]) == "gradient of the heads"
    extra_bad = reduce_gramian(rows, torch.ones(2), [torch.zeros(1), torch.tensor([INF])])
    assert extra_bad.culprit(["a", "b"]) == "adversaries' reversed gradient"
    task_bad = reduce_gramian(
        torch.tensor([[1.0, 0.0], [INF, 1.0]]), torch.ones(2), [torch.zeros(0)] * 2
    )
    assert task_bad.culprit(["a", "b"]) == "gradient from task(s) 'b'"
    assert not math.isfinite(float(task_bad.gramian[0, 1]))  # the packed vector is not finite


def test_flat_grad_and_write_grads_match_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    x = torch.randn(5, 3)
    params = list(model.parameters())
    flat = flat_grad(model(x).sum(), params)
    model(x).sum().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(flat, expected)
    for p in params:
        p.grad = None
    write_grads(params, flat)
    for p, g in zip(params, torch.split(expected, [p.numel() for p in params]), strict=True):
        assert torch.equal(p.grad, g.view_as(p))
    with pytest.raises(ValueError, match="entries for"):
        write_grads(params, torch.cat([flat, torch.zeros(1)]))  # one entry too many


@pytest.mark.parametrize("trunk_kind", ["dense", "cnn"])
def test_the_batched_trunk_jacobian_is_the_k_pass_one(trunk_kind):
    from mtl_lightning.nn import CNNTrunk, DenseTrunk
    from mtl_lightning.training.aggregated import batched_vjp
    from mtl_lightning.training.packing import trunk_jacobian

    torch.manual_seed(0)
    if trunk_kind == "dense":  # BatchNorm and dropout, in training mode
        trunk, x = DenseTrunk(12, divisors=[2, 3], dropout=0.2).train(), torch.randn(16, 12)
    else:
        trunk, x = CNNTrunk(channels=(2, 3, 4), out_features=8).train(), torch.randn(4, 8, 16)
    assert batched_vjp(trunk) == (trunk_kind == "dense")
    params = [p for p in trunk.parameters() if p.requires_grad]
    embedding = trunk(x)
    rows = [torch.randn_like(embedding) for _ in range(3)]
    batched = trunk_jacobian(embedding, params, rows, batched=True)
    passes = trunk_jacobian(embedding, params, rows, batched=False)
    assert batched.shape == (3, sum(p.numel() for p in params))
    torch.testing.assert_close(batched, passes, rtol=1e-5, atol=1e-6)
    unused = nn.Parameter(torch.ones(2))  # an input the output does not depend on: zeros
    assert torch.equal(trunk_jacobian(embedding, [unused], rows, batched=True), torch.zeros(3, 2))
