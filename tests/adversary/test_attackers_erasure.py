"""Attacker ensembles (best response, re-initialisation, optimizer state in the state dict) and
the LEACE eraser (against concept-erasure fitted in one go; statistics merged over 'ranks';
the guarantee: no linear probe beats chance on the data it was fitted on)."""

import copy

import torch
import torch.nn.functional as F
from concept_erasure import LeaceFitter

from mtl_lightning.adversary import AttackerEnsemble, LinearEraser
from mtl_lightning.probe import bootstrap_balanced_accuracy, fit_probe


def _data(n: int = 256, d: int = 8, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, d, generator=g) + 2.0 * F.one_hot(y, d).float()
    return x, y


def test_best_response_learns_without_touching_gradients_or_other_optimizers():
    x, y = _data()
    ens = AttackerEnsemble(8, 4, hidden=(0, 32), steps=5)
    before = ens(x).detach()
    for _ in range(20):
        first = ens.best_response(x, y)
    after = ens(x).detach()
    ce = [F.cross_entropy(logits, y) for logits in (before[0], after[0])]
    assert ce[1] < 0.7 * ce[0]
    assert first.shape == (2, 256, 4) and not first.requires_grad
    assert all(not p.requires_grad and p.grad is None for p in ens.parameters())


def test_reinitialise_is_seeded_and_clears_only_that_attackers_optimizer_state():
    x, y = _data()
    ens = AttackerEnsemble(8, 4, hidden=(0, 16), steps=2)
    ens.best_response(x, y)
    twin = copy.deepcopy(ens)
    ens.reinitialise(1, seed=7)
    twin.reinitialise(1, seed=7)
    for a, b in zip(ens.attackers[1].parameters(), twin.attackers[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(p not in ens.optimizer.state for p in ens.attackers[1].parameters())
    assert all(p in ens.optimizer.state for p in ens.attackers[0].parameters())
    other = copy.deepcopy(twin)
    other.reinitialise(1, seed=8)
    assert not torch.equal(other.attackers[1][1].weight, twin.attackers[1][1].weight)


def test_state_dict_carries_the_optimizer_so_a_restored_ensemble_continues_identically():
    x, y = _data()
    ens = AttackerEnsemble(8, 4, hidden=(0, 16), steps=3)
    ens.best_response(x, y)
    restored = AttackerEnsemble(8, 4, hidden=(0, 16), steps=3)
    restored.load_state_dict(ens.state_dict())
    ens.best_response(x, y)
    restored.best_response(x, y)
    for a, b in zip(ens.state_dict().values(), restored.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_eraser_equals_concept_erasure_fitted_in_one_go_and_merges_rank_statistics():
    x, y = _data(300, 6, 3)
    reference = LeaceFitter.fit(x.double(), F.one_hot(y, 3).double()).eraser
    halves = [LinearEraser(6, 3), LinearEraser(6, 3)]
    halves[0].update(x[:120], y[:120])
    halves[1].update(x[120:], y[120:])
    # a 2-"rank" all-reduce: each statistic summed over both erasers
    other = iter([s.clone() for s in halves[1]._sums()])  # fit() reduces its sums in this order
    halves[0].fit(lambda t: t + next(other))
    torch.testing.assert_close(halves[0](x).double(), reference(x.double()), rtol=1e-4, atol=1e-4)
    assert float(halves[0].sums["count"]) == 0  # a new accumulation starts


def test_a_linear_probe_is_at_chance_on_the_data_the_eraser_was_fitted_on():
    x, y = _data(440, 16, 11, seed=3)
    # a strong class signal in every direction; its own generator, so the test does not depend
    # on what ran before it in the process (with the global generator ~2% of states fail the
    # interval check, which is a bootstrap interval, not a bound)
    signal = torch.randn(11, 16, generator=torch.Generator().manual_seed(4))
    x = x + 3.0 * signal[y]
    before = fit_probe(x, y, x, y, 11, "linear")
    eraser = LinearEraser(16, 11)
    eraser.update(x, y)
    eraser.fit()
    erased = eraser(x)
    after = fit_probe(erased, y, erased, y, 11, "linear")
    acc_before = bootstrap_balanced_accuracy(before, y, 11)[0]
    acc, low, high = bootstrap_balanced_accuracy(after, y, 11)
    assert acc_before > 0.9
    assert low <= 1 / 11 <= high, (acc, low, high)


def test_the_memory_keeps_the_latest_samples_and_travels_with_the_state_dict():
    x, y = _data(200)
    ens = AttackerEnsemble(8, 4, hidden=(0,), steps=1, memory=96)
    for i in range(0, 200, 40):
        ens.best_response(x[i : i + 40], y[i : i + 40])
    state = ens.state_dict()["_extra_state"]
    assert torch.equal(state["memory_z"], x[104:200]) and torch.equal(state["memory_y"], y[104:200])
    restored = AttackerEnsemble(8, 4, hidden=(0,), steps=1, memory=96)
    restored.load_state_dict(ens.state_dict())
    ens.best_response(x[:8], y[:8])
    restored.best_response(x[:8], y[:8])
    assert torch.equal(ens.attackers[0][1].weight, restored.attackers[0][1].weight)
