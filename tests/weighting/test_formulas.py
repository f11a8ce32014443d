"""Each weighting formula against values computed by hand on small inputs."""

import math

import pytest
import torch
from torchjd.aggregation import MGDA, PCGrad, UPGrad

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import (
    FAMO,
    DynamicWeightAverage,
    GradNorm,
    InverseMetricWeighting,
    JacobianAggregation,
    RandomLossWeighting,
    UncertaintyWeighting,
    dwa_weights,
    famo_logit_gradient,
    famo_weights,
    gradnorm_update,
    inverse_metric_weights,
    uncertainty_total,
)

TASKS3 = [TaskSpec("a", 2), TaskSpec("b", 2), TaskSpec("c", 2)]


def test_dwa_weights_from_a_known_loss_history():
    d = DynamicWeightAverage(temperature=2.0)
    d.setup(TASKS3)
    assert d.current_weights() == {"a": 1.0, "b": 1.0, "c": 1.0}  # no history yet
    d.on_train_epoch_end({"a": 1.0, "b": 2.0, "c": 4.0})
    assert d.current_weights() == {"a": 1.0, "b": 1.0, "c": 1.0}  # one epoch is not enough
    d.on_train_epoch_end({"a": 0.5, "b": 2.0, "c": 1.0})
    # r = (0.5, 1.0, 0.25); w_k = 3 exp(r_k / 2) / sum_j exp(r_j / 2)
    e = [math.exp(0.25), math.exp(0.5), math.exp(0.125)]
    expected = [3 * x / sum(e) for x in e]
    got = list(d.current_weights().values())
    assert got == pytest.approx(expected, abs=1e-6)
    assert sum(got) == pytest.approx(3.0)
    torch.testing.assert_close(
        dwa_weights(torch.tensor([0.5, 2.0, 1.0]), torch.tensor([1.0, 2.0, 4.0]), 2.0),
        torch.tensor(expected),
    )


def test_dwa_total_uses_the_weights_and_keeps_adversaries_static():
    tasks = [TaskSpec("a", 2), TaskSpec("b", 2), TaskSpec("adv", 3, role="adversarial", weight=0.5)]
    d = DynamicWeightAverage(temperature=1.0)
    d.setup(tasks)
    d.on_train_epoch_end({"a": 2.0, "b": 1.0})
    d.on_train_epoch_end({"a": 1.0, "b": 1.0})
    wa, wb = d.current_weights().values()
    total = d({"a": torch.tensor(1.0), "b": torch.tensor(2.0), "adv": torch.tensor(4.0)}, tasks)
    assert float(total) == pytest.approx(wa * 1.0 + wb * 2.0 + 0.5 * 4.0)


def test_uncertainty_total_and_its_gradient_for_known_log_variances():
    losses = torch.tensor([2.0, 4.0])
    s = torch.tensor([math.log(2.0), math.log(0.5)], requires_grad=True)
    regression = torch.tensor([False, True])
    total = uncertainty_total(losses, s, regression)
    # classification: L/sigma^2 + log(sigma^2)/2 = 2/2 + log(2)/2
    # regression: L/(2 sigma^2) + log(sigma^2)/2 = 4/(2*0.5) + log(0.5)/2
    assert float(total) == pytest.approx(1.0 + math.log(2) / 2 + 4.0 + math.log(0.5) / 2)
    (grad,) = torch.autograd.grad(total, s)
    # d/ds [c exp(-s) L + s/2] = -c exp(-s) L + 1/2
    expected = [-1.0 * 0.5 * 2.0 + 0.5, -0.5 * 2.0 * 4.0 + 0.5]
    assert grad.tolist() == pytest.approx(expected)


def test_uncertainty_log_variances_are_learned_parameters():
    tasks = [TaskSpec("a", 2), TaskSpec("b", 1, kind="regression")]
    u = UncertaintyWeighting(init_log_var=0.5)
    u.setup(tasks)
    total = u({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}, tasks)
    total.backward()
    assert u.log_vars.grad is not None and u.log_vars.grad.shape == (2,)
    assert u.last_weights["a"] == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert u.last_weights["b"] == pytest.approx(0.5 * math.exp(-0.5), abs=1e-6)


def test_inverse_accuracy_weights_from_known_accuracies():
    w = inverse_metric_weights(torch.tensor([0.8, 0.4, 0.2]), higher_is_better=True, floor=0.0)
    # 1/acc = (1.25, 2.5, 5), scaled to sum 3
    expected = [3 * x / 8.75 for x in (1.25, 2.5, 5.0)]
    assert w.tolist() == pytest.approx(expected)
    strategy = InverseMetricWeighting(metric="acc", smoothing=0.5, floor=0.0)
    strategy.setup(TASKS3)
    strategy.on_validation_end({n: {"acc": a} for n, a in zip("abc", (0.8, 0.4, 0.2), strict=True)})
    assert list(strategy.current_weights().values()) == pytest.approx(
        [0.5 + 0.5 * e for e in expected], abs=1e-6
    )


def test_inverse_metric_floor_keeps_every_task():
    w = inverse_metric_weights(torch.tensor([1.0, 1e-4]), higher_is_better=True, floor=0.2)
    assert float(w.min()) >= 0.2
    assert float(w.sum()) == pytest.approx(2.0)
    # lower-is-better: raw (1.9998, 0.0002); the floored task is fixed at the floor, the other
    # takes the rest of K (a clamp followed by renormalising gave 0.0488 < 0.05)
    w = inverse_metric_weights(torch.tensor([1.0, 1e-4]), higher_is_better=False, floor=0.05)
    assert float(w.min()) >= 0.05
    assert w.tolist() == pytest.approx([1.95, 0.05])
    # two floored tasks of three; the unfloored ones keep their ratio
    w = inverse_metric_weights(torch.tensor([1.0, 0.5, 1e-3, 1e-4]), False, floor=0.1)
    assert float(w.min()) >= 0.1 - 1e-7
    assert float(w.sum()) == pytest.approx(4.0)
    assert float(w[0] / w[1]) == pytest.approx(2.0)
    assert w[2:].tolist() == pytest.approx([0.1, 0.1])


def test_inverse_metric_nan_value_keeps_the_task_weight():
    # e.g. a regression task without labelled validation samples: its mse is NaN
    w = inverse_metric_weights(torch.tensor([0.9, 0.3, math.nan]), higher_is_better=True)
    assert w.tolist() == pytest.approx([0.5, 1.5, 1.0])
    previous = torch.tensor([0.5, 0.7, 1.8])
    w = inverse_metric_weights(torch.tensor([0.9, 0.3, math.nan]), True, previous=previous)
    # the NaN task keeps 1.8; the others share 3 - 1.8 = 1.2 as 1/0.9 : 1/0.3 = 1 : 3
    assert w.tolist() == pytest.approx([0.3, 0.9, 1.8])
    s = InverseMetricWeighting(metric="acc", regression_metric="mse", smoothing=0.5)
    s.setup(TASKS3)
    s.on_validation_end({"a": {"acc": 0.9}, "b": {"acc": 0.3}, "c": {"acc": 0.6}})
    before = s.current_weights()
    s.on_validation_end({"a": {"acc": 0.9}, "b": {"acc": 0.3}, "c": {"acc": math.nan}})
    after = s.current_weights()
    assert all(math.isfinite(v) for v in after.values())
    assert after["c"] == pytest.approx(before["c"], abs=1e-6)
    assert sum(after.values()) == pytest.approx(3.0, abs=1e-5)
    s.on_validation_end({n: {"acc": math.nan} for n in "abc"})
    assert s.current_weights() == after


def test_dwa_with_a_task_unlabelled_for_an_epoch_stays_finite():
    # no labelled sample of c in an epoch: its epoch-mean loss is NaN
    assert dwa_weights(
        torch.tensor([1.0, 1.0, math.nan]), torch.tensor([2.0, 1.0, 1.0]), 1.0
    ).tolist() == pytest.approx([0.755081, 1.244919, 1.0], abs=1e-6)
    d = DynamicWeightAverage(temperature=2.0)
    d.setup(TASKS3)
    d.on_train_epoch_end({"a": 1.0, "b": 2.0, "c": 4.0})
    d.on_train_epoch_end({"a": 0.5, "b": 2.0, "c": 1.0})
    known = d.current_weights()
    d.on_train_epoch_end({"a": 0.5, "b": 1.0, "c": math.nan})
    got = d.current_weights()
    assert all(math.isfinite(v) for v in got.values())
    assert sum(got.values()) == pytest.approx(3.0, abs=1e-5)
    # c keeps its last rate (1.0 / 4.0); a and b move on to (0.5/0.5, 1.0/2.0)
    e = [math.exp(1.0 / 2), math.exp(0.5 / 2), math.exp(0.25 / 2)]
    assert list(got.values()) == pytest.approx([3 * x / sum(e) for x in e], abs=1e-6)
    assert got != known
    # a task without a loss in its first epochs has weight 1 until it has two
    d = DynamicWeightAverage(temperature=1.0)
    d.setup(TASKS3)
    d.on_train_epoch_end({"a": 2.0, "b": 1.0, "c": math.nan})
    d.on_train_epoch_end({"a": 1.0, "b": 1.0, "c": 3.0})
    assert d.current_weights() == pytest.approx({"a": 0.755081, "b": 1.244919, "c": 1.0})


def test_inverse_metric_lower_is_better_and_missing_metric_error():
    s = InverseMetricWeighting(metric="loss", smoothing=0.0, floor=0.0)
    s.setup(TASKS3[:2])
    s.on_validation_end({"a": {"loss": 1.0}, "b": {"loss": 3.0}})
    assert s.current_weights() == {"a": 0.5, "b": 1.5}
    with pytest.raises(KeyError, match="task 'b'"):
        s.on_validation_end({"a": {"loss": 1.0}, "b": {"acc": 3.0}})


def test_pcgrad_on_two_conflicting_gradients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # by hand: g1' = g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5); g2' = g2 - (g2.g1/|g1|^2) g1 = (0, 1)
    jac = torch.stack([g1, g2])
    agg = JacobianAggregation(PCGrad())
    agg.setup(TASKS3[:2])
    w = agg.gramian_weights(jac @ jac.T, torch.ones(2))
    torch.testing.assert_close(w @ jac, torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(w, torch.tensor([2.0, 1.5]))
    torch.testing.assert_close(PCGrad()(jac), torch.tensor([0.5, 1.5]))  # torchjd agrees


def test_pcgrad_seeding_leaves_global_rng_alone_and_is_reproducible_per_step(monkeypatch):
    # three tasks with pairwise conflicts: PCGrad's result depends on its random task order
    jac = torch.tensor([[1.0, 0.0, 0.2], [-0.8, 1.0, 0.0], [0.1, -0.9, 1.0]])
    gramian = jac @ jac.T
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    torch.manual_seed(123)
    reseeded.clear()
    state = torch.get_rng_state()
    first = JacobianAggregation(PCGrad(), seed=7)
    first.setup(TASKS3)
    seen = [first.gramian_weights(gramian, torch.ones(3)) for _ in range(8)]
    assert torch.equal(torch.get_rng_state(), state)  # the global CPU generator is restored
    assert reseeded == []  # and no accelerator generator is reseeded (nor left reseeded)
    assert len({tuple(w.tolist()) for w in seen}) > 1  # the order does change with the step
    torch.rand(5)  # whatever the global generator did in between
    again = JacobianAggregation(PCGrad(), seed=7)
    again.setup(TASKS3)
    for expected in seen:
        torch.testing.assert_close(again.gramian_weights(gramian, torch.ones(3)), expected)
    resumed = JacobianAggregation(PCGrad(), seed=7)
    resumed.load_state_dict(first.state_dict())
    resumed.step.fill_(3)
    torch.testing.assert_close(resumed.gramian_weights(gramian, torch.ones(3)), seen[3])


def test_aggregation_weights_reproduce_torchjd_aggregators():
    jac = torch.tensor([[1.0, 2.0, -1.0], [-2.0, 0.5, 1.0], [0.3, -0.2, 2.0]])
    for aggregator in (UPGrad(), MGDA()):
        agg = JacobianAggregation(aggregator, level="rep")
        agg.setup(TASKS3)
        w = agg.gramian_weights(jac @ jac.T, torch.ones(3))
        torch.testing.assert_close(w @ jac, aggregator(jac), atol=1e-4, rtol=1e-4)


def test_aggregation_rejects_unweighted_aggregators_and_rep_for_matrix_weightings():
    from torchjd.aggregation import GradDrop

    with pytest.raises(TypeError, match="GradDrop does not expose task weights"):
        JacobianAggregation(GradDrop())


def test_famo_weights_and_logit_gradient_match_autograd_of_the_reference():
    logits = torch.tensor([0.3, -0.2, 0.1])
    prev, now = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([1.5, 0.9, 0.6])
    delta = prev.log() - now.log()
    x = logits.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(torch.softmax(x, 0), x, grad_outputs=delta)
    torch.testing.assert_close(
        famo_logit_gradient(logits, prev, now, torch.zeros(3), eps=0.0), reference
    )
    # weights: d/dL_k of sum z log(L) / c, with c = sum z/L, scaled by K
    losses = now.clone().requires_grad_(True)
    z = torch.softmax(logits, 0)
    c = (z / now).sum()
    (grad,) = torch.autograd.grad((z * losses.log()).sum() / c, losses)
    torch.testing.assert_close(famo_weights(logits, now, torch.zeros(3), eps=0.0), 3 * grad)


def test_famo_raises_the_weight_of_the_task_that_is_not_improving():
    f = FAMO(lr=0.1, update="next_batch")
    f.setup(TASKS3[:2])
    losses = [(1.0, 1.0), (0.5, 1.0), (0.25, 1.0), (0.125, 1.0)]
    for a, b in losses:
        f({"a": torch.tensor(a), "b": torch.tensor(b)}, TASKS3[:2])
        f.after_optimizer_step(dict)  # the host's hook; next_batch recomputes nothing
    assert int(f.adam_t) == 3  # one update per step, from the second step's losses on
    z = torch.softmax(f.logits, 0)
    assert float(z[1]) > float(z[0])  # task b stalls, so its logit grows


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (1.0, 0.5, 1.0)])
def test_famo_total_is_the_weighted_sum_term_by_term_bit_for_bit(weights):
    tasks = [TaskSpec(n, 2, weight=w) for n, w in zip("abc", weights, strict=True)]
    f = FAMO(update="next_batch")
    f.setup(tasks)
    f.logits = torch.tensor([0.3, -0.2, 0.1])
    values = torch.tensor([1.7, 0.9, 2.3], requires_grad=True)
    losses = dict(zip("abc", values.unbind(), strict=True))
    total = f(losses, tasks)
    dynamic = famo_weights(f.logits, values.detach(), f.min_losses)
    terms = [w * (values[i] * dynamic[i]) for i, w in enumerate(weights)]
    expected = torch.stack(terms).sum()
    assert torch.equal(total, expected)
    (grad,) = torch.autograd.grad(total, values)
    (expected_grad,) = torch.autograd.grad(expected, values)
    assert torch.equal(grad, expected_grad)


def test_gradnorm_step_by_hand():
    w = gradnorm_update(
        torch.tensor([1.0, 1.0]),
        grad_norms=torch.tensor([1.0, 3.0]),
        losses=torch.tensor([0.5, 1.0]),
        initial_losses=torch.tensor([1.0, 1.0]),
        alpha=1.0,
        lr=0.1,
    )
    # G = (1, 3), G_bar = 2; r = (0.5, 1) / 0.75; target = 2 r = (4/3, 8/3)
    # grad = sign(G - target) * norm / mean_norm = (-1 * 1/2, +1 * 3/2)
    # w' = (1.05, 0.85) -> renormalised to sum 2
    assert w.tolist() == pytest.approx([2 * 1.05 / 1.9, 2 * 0.85 / 1.9])


def test_gradnorm_uses_pre_update_weights_and_records_initial_losses():
    g = GradNorm(lr=0.1, alpha=1.0)
    g.setup(TASKS3[:2])
    first = g.gramian_weights(torch.diag(torch.tensor([1.0, 9.0])), torch.tensor([2.0, 4.0]))
    assert first.tolist() == [1.0, 1.0]
    assert g.initial_losses.tolist() == [2.0, 4.0]
    assert g.weights[0] > g.weights[1]  # the task with the larger gradient is turned down


def test_rlw_weights_are_reproducible_per_step_and_sum_to_k():
    r1, r2 = RandomLossWeighting(seed=3), RandomLossWeighting(seed=3)
    for r in (r1, r2):
        r.setup(TASKS3)
    seen = []
    for _ in range(3):
        ones = {n: torch.tensor(1.0) for n in "abc"}
        assert float(r1(ones, TASKS3)) == pytest.approx(3.0)
        r2(ones, TASKS3)
        assert r1.last_weights == r2.last_weights
        seen.append(tuple(r1.last_weights.values()))
    assert len(set(seen)) == 3  # fresh weights every step
    r1.eval()
    r1({n: torch.tensor(1.0) for n in "abc"}, TASKS3)
    assert r1.last_weights == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_only_randomised_aggregators_draw_from_a_seeded_generator(monkeypatch):
    from torchjd.aggregation import MGDA, Mean, PCGrad, UPGrad

    from mtl_lightning.weighting import GradNorm, JacobianAggregation

    forks = []
    original = torch.random.fork_rng
    monkeypatch.setattr(
        torch.random, "fork_rng", lambda *a, **k: forks.append(1) or original(*a, **k)
    )
    g = torch.tensor([[1.0, 0.2], [0.2, 2.0]])
    for aggregator, random in ((UPGrad(), False), (MGDA(), False), (PCGrad(), True)):
        strategy = JacobianAggregation(aggregator)
        forks.clear()
        strategy.gramian_weights(g, torch.ones(2))
        assert strategy.random is random and len(forks) == int(random), aggregator
    # PCGrad's draws stay reproducible: the same step and seed give the same weights
    a, b = JacobianAggregation(PCGrad(), seed=3), JacobianAggregation(PCGrad(), seed=3)
    assert torch.equal(a.gramian_weights(g, torch.ones(2)), b.gramian_weights(g, torch.ones(2)))
    # the Jacobian goes only to the strategies that read it
    assert JacobianAggregation(Mean()).needs_jacobian
    assert not JacobianAggregation(UPGrad()).needs_jacobian and not GradNorm.needs_jacobian
