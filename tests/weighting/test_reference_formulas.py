"""Each strategy against an independent implementation of its reference, on identical inputs.

The references are written here from the papers and from the code they cite (LibMTL cannot
be installed in the test environment): LibMTL ``LibMTL/weighting/{EW,DWA,RLW,UW}.py``,
FAMO's official ``famo.py`` (github.com/Cranial-XIX/FAMO), GradNorm's Algorithm 1 (Chen et al.
2018) through autograd.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import (
    FAMO,
    DynamicWeightAverage,
    GradNorm,
    RandomLossWeighting,
    StaticWeighting,
    UncertaintyWeighting,
)

TASKS3 = [TaskSpec("a", 2), TaskSpec("b", 2), TaskSpec("c", 2)]
NAMES = ["a", "b", "c"]


def _as_dict(values: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(zip(NAMES, values, strict=True))


def test_static_equals_libmtl_ew_and_the_given_weights():
    losses = torch.tensor([0.7, 1.9, 0.2], requires_grad=True)
    # LibMTL EW.backward: loss = torch.mul(losses, torch.ones_like(losses)).sum()
    s = StaticWeighting()
    s.setup(TASKS3)
    total = s(_as_dict(losses), TASKS3)
    reference = torch.mul(losses, torch.ones_like(losses)).sum()
    torch.testing.assert_close(total, reference)
    weights = {"a": 0.5, "b": 2.0, "c": 0.0}
    s = StaticWeighting(weights)
    s.setup(TASKS3)
    (grad,) = torch.autograd.grad(s(_as_dict(losses), TASKS3), losses)
    assert grad.tolist() == [0.5, 2.0, 0.0]
    assert s.last_weights == weights


def _libmtl_dwa_weights(buffer: torch.Tensor, epoch: int, temperature: float) -> torch.Tensor:
    """LibMTL DWA.backward: ``train_loss_buffer[:, e]`` is epoch ``e``'s mean training loss."""
    task_num = buffer.shape[0]
    if epoch > 1:
        w_i = buffer[:, epoch - 1] / buffer[:, epoch - 2]
        return task_num * F.softmax(w_i / temperature, dim=-1)
    return torch.ones(task_num)


def test_dwa_equals_libmtl_over_five_epochs():
    gen = torch.Generator().manual_seed(0)
    buffer = torch.rand(3, 5, generator=gen) + 0.1
    d = DynamicWeightAverage(temperature=2.0)
    d.setup(TASKS3)
    for epoch in range(5):
        losses = torch.rand(3, generator=gen)
        expected = _libmtl_dwa_weights(buffer, epoch, 2.0)
        total = d(_as_dict(losses), TASKS3)
        torch.testing.assert_close(total, torch.mul(losses, expected).sum())
        assert list(d.last_weights.values()) == pytest.approx(expected.tolist(), abs=1e-6)
        d.on_train_epoch_end(dict(zip(NAMES, buffer[:, epoch].tolist(), strict=True)))


def test_rlw_is_k_times_libmtl_softmax_of_the_same_normal_draw():
    r = RandomLossWeighting(seed=11)
    r.setup(TASKS3)
    losses = torch.tensor([0.3, 1.0, 2.5])
    for step in range(3):
        total = r(_as_dict(losses), TASKS3)
        # the project's draw: z ~ N(0, I) from a generator seeded by (seed, step)
        z = torch.randn(3, generator=torch.Generator().manual_seed(11 * 1_000_003 + step))
        libmtl = F.softmax(z, dim=-1)  # LibMTL RLW.backward: softmax(torch.randn(task_num))
        torch.testing.assert_close(total, torch.mul(losses, 3 * libmtl).sum())
        assert list(r.last_weights.values()) == pytest.approx((3 * libmtl).tolist(), abs=1e-6)


def test_rlw_seed_comes_from_seed_everything_unless_given():
    def draws(run_seed: int, seed: int | None = None) -> list[list[float]]:
        pl.seed_everything(run_seed, verbose=False)
        r = RandomLossWeighting(seed)
        r.setup(TASKS3)
        out = []
        for _ in range(3):
            r(_as_dict(torch.ones(3)), TASKS3)
            out.append(list(r.last_weights.values()))
        return out

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert draws(1, seed=5) == draws(2, seed=5)
    # resumable: a strategy set up under another seed continues the saved sequence
    pl.seed_everything(1, verbose=False)
    first = RandomLossWeighting()
    first.setup(TASKS3)
    first(_as_dict(torch.ones(3)), TASKS3)
    pl.seed_everything(9, verbose=False)
    resumed = RandomLossWeighting()
    resumed.setup(TASKS3)
    resumed.load_state_dict(first.state_dict())
    resumed(_as_dict(torch.ones(3)), TASKS3)
    assert list(resumed.last_weights.values()) == draws(1)[1]


def test_rlw_derived_seed_is_agreed_over_ranks_once():
    calls = []

    def mean_with_another_rank(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.dtype)
        return (t + 1001.0) / 2  # the other rank's seed is 1001

    pl.seed_everything(3, verbose=False)
    r = RandomLossWeighting()
    r.setup(TASKS3)
    r.set_reducer(mean_with_another_rank)
    for _ in range(2):
        r(_as_dict(torch.ones(3)), TASKS3)
    assert calls == [torch.float64]
    assert int(r.run_seed) == 502  # (3 + 1001) / 2 on every rank
    given = RandomLossWeighting(seed=3)
    given.setup(TASKS3)
    given.set_reducer(mean_with_another_rank)
    given(_as_dict(torch.ones(3)), TASKS3)
    assert len(calls) == 1 and int(given.run_seed) == 3


def _libmtl_uw_total(losses: torch.Tensor, loss_scale: torch.Tensor) -> torch.Tensor:
    """LibMTL UW.backward: ``(losses / (2 * loss_scale.exp()) + loss_scale / 2).sum()``."""
    return (losses / (2 * loss_scale.exp()) + loss_scale / 2).sum()


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_uncertainty_equals_libmtl_uw_after_the_documented_scaling(kind):
    size = 1 if kind == "regression" else 3
    tasks = [TaskSpec(n, size, kind=kind) for n in ("a", "b")]
    u = UncertaintyWeighting()
    u.setup(tasks)
    with torch.no_grad():
        u.log_vars.copy_(torch.tensor([0.4, -1.2]))
    losses = torch.tensor([1.5, 0.25], requires_grad=True)
    total = u({"a": losses[0], "b": losses[1]}, tasks)
    # regression: c_k = 1/2, LibMTL's form at the same s; classification: c_k = 1, LibMTL's
    # form at s - log 2, plus log(2)/2 per task (Kendall et al. 2018, eq. 5 and eq. 10)
    shift = 0.0 if kind == "regression" else math.log(2)
    scale = u.log_vars.detach().clone().requires_grad_(True)
    reference = _libmtl_uw_total(losses, scale - shift) + len(tasks) * shift / 2
    torch.testing.assert_close(total, reference)
    got = torch.autograd.grad(total, [losses, u.log_vars])
    want = torch.autograd.grad(reference, [losses, scale])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    c = 0.5 if kind == "regression" else 1.0
    expected = [c * math.exp(-0.4), c * math.exp(1.2)]
    assert list(u.last_weights.values()) == pytest.approx(expected, abs=1e-6)


class _OfficialFamo:
    """The update of FAMO's official ``famo.py`` (Cranial-XIX/FAMO), for a known loss pair."""

    def __init__(self, n_tasks: int, gamma: float, w_lr: float) -> None:
        self.w = torch.zeros(n_tasks, requires_grad=True)
        self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        """d/dL of ``sum_k log(D_k) z_k / c`` with ``c = sum z/D`` detached (their loss)."""
        losses = losses.clone().requires_grad_(True)
        z = F.softmax(self.w.detach(), -1)
        d = losses + 1e-8
        c = (z / d).sum().detach()
        (grad,) = torch.autograd.grad((d.log() * z / c).sum(), losses)
        return grad

    def update(self, prev_loss: torch.Tensor, curr_loss: torch.Tensor) -> None:
        delta = (prev_loss + 1e-8).log() - (curr_loss + 1e-8).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta)[0]
        self.w_opt.zero_grad()
        self.w.grad = d
        self.w_opt.step()


def test_famo_same_batch_update_equals_the_official_code():
    gen = torch.Generator().manual_seed(1)
    f = FAMO(lr=0.05, gamma=0.01)
    f.setup(TASKS3)
    official = _OfficialFamo(3, gamma=0.01, w_lr=0.05)
    recomputed: list[int] = []
    for _ in range(6):
        before = torch.rand(3, generator=gen) + 0.2
        after = before * (0.5 + torch.rand(3, generator=gen))
        f(_as_dict(before), TASKS3)
        expected = 3 * official.weights(before)  # the project's weights are K times theirs
        assert list(f.last_weights.values()) == pytest.approx(expected.tolist(), abs=1e-5)
        f.after_optimizer_step(lambda after=after: recomputed.append(1) or _as_dict(after))
        official.update(before, after)
        torch.testing.assert_close(f.logits, official.w.detach())
    assert int(f.adam_t) == 6 and len(recomputed) == 6  # one extra forward per step
    f.eval()  # no update outside training, and no recomputation asked for
    f.after_optimizer_step(lambda: pytest.fail("recomputed in eval mode"))


def test_famo_next_batch_update_equals_the_official_code_on_consecutive_batches():
    """next_batch's "after" losses are the next batch's: the official update fed (L_t, L_t+1)."""
    gen = torch.Generator().manual_seed(2)
    f = FAMO(lr=0.05, gamma=0.01, update="next_batch")
    f.setup(TASKS3)
    official = _OfficialFamo(3, gamma=0.01, w_lr=0.05)
    previous = None
    for _ in range(8):
        losses = torch.rand(3, generator=gen) + 0.2
        if previous is not None:
            official.update(previous, losses)
        f(_as_dict(losses), TASKS3)  # the update from the last step's losses, then the weights
        torch.testing.assert_close(f.logits, official.w.detach())
        expected = 3 * official.weights(losses)
        assert list(f.last_weights.values()) == pytest.approx(expected.tolist(), abs=1e-5)
        f.after_optimizer_step(lambda: pytest.fail("next_batch recomputes nothing"))
        previous = losses
    assert int(f.adam_t) == 7


def test_famo_rejects_an_unknown_update_and_skips_a_diverged_step():
    with pytest.raises(ValueError, match="update must be 'same_batch' or 'next_batch'"):
        FAMO(update="later")  # type: ignore[arg-type]
    f = FAMO()
    f.setup(TASKS3)
    f(_as_dict(torch.ones(3)), TASKS3)
    f.after_optimizer_step(lambda: _as_dict(torch.tensor([0.5, math.nan, 1.0])))
    assert int(f.adam_t) == 0 and not bool(f.has_previous)
    assert f.logits.tolist() == [0.0, 0.0, 0.0]


def _paper_gradnorm(weights, grads, losses, initial, alpha, opt):
    """Algorithm 1 of Chen et al. 2018 by autograd: ``G_k = ||d(w_k L_k)/dW||`` on the shared
    layer ``W`` (here its per-task gradients ``grads``), the target held constant, one step of
    ``opt`` on ``w`` only, then ``w`` renormalised to sum to ``K``."""
    g = torch.linalg.vector_norm(weights[:, None] * grads, dim=1)
    ratio = losses / initial
    target = (g.mean() * (ratio / ratio.mean()) ** alpha).detach()
    l_grad = (g - target).abs().sum()
    opt.zero_grad()
    l_grad.backward()
    opt.step()
    with torch.no_grad():
        weights.copy_(len(weights) * weights / weights.sum())


def test_gradnorm_paper_variant_step_by_hand_and_against_autograd():
    g = GradNorm(alpha=1.0, lr=0.1)
    g.setup(TASKS3[:2])
    grads = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # ||g|| = (1, 3)
    assert g.gramian_weights(grads @ grads.T, torch.tensor([1.0, 1.0])).tolist() == [1.0, 1.0]
    # step 1, L = L(0): r = (1, 1); G = (1, 3), target = G_bar = 2; dL_grad/dw = (-1, +3);
    # Adam's first step moves each w by lr against the sign: (1.1, 0.9), already summing to 2
    assert g.weights.tolist() == pytest.approx([1.1, 0.9])
    weights = torch.ones(2, requires_grad=True)
    opt = torch.optim.Adam([weights], lr=0.1)
    initial = torch.tensor([1.0, 1.0])
    _paper_gradnorm(weights, grads, initial, initial, 1.0, opt)
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        grads = torch.randn(2, 5, generator=gen)
        losses = torch.rand(2, generator=gen) + 0.1
        used = g.gramian_weights(grads @ grads.T, losses)
        torch.testing.assert_close(used, weights.detach())  # pre-update weights are applied
        _paper_gradnorm(weights, grads, losses, initial, 1.0, opt)
        torch.testing.assert_close(g.weights, weights.detach())
        assert float(g.weights.sum()) == pytest.approx(2.0)


def test_gradnorm_keeps_the_normalised_variant_and_rejects_unknown_ones():
    g = GradNorm(alpha=1.0, lr=0.1, variant="normalised")
    g.setup(TASKS3[:2])
    g.gramian_weights(torch.diag(torch.tensor([1.0, 9.0])), torch.ones(2))
    # the normalised step: grad (-1, 3) / mean norm 2 -> w = (1.05, 0.85), summed to 2
    assert g.weights.tolist() == pytest.approx([2 * 1.05 / 1.9, 2 * 0.85 / 1.9])
    with pytest.raises(ValueError, match="variant must be 'paper' or 'normalised'"):
        GradNorm(variant="libmtl")  # type: ignore[arg-type]
