"""`fused_on_cpu` and `foreach_on_cpu`: torch's faster optimizer implementations on the CPU.

``foreach`` gives the values of the default for-loop bit for bit; ``fused`` (Adam, AdamW, the
package's default) those of the same algorithm within float rounding, in single steps and in a
whole fit."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch

from mtl_lightning import MultiTaskModule
from mtl_lightning.adversary.attackers import AttackerEnsemble
from mtl_lightning.data import SyntheticTabularDataModule
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.optim import foreach_on_cpu, fused_on_cpu

OPTIMIZERS = {
    "adamw": functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4),
    "adam_l2": functools.partial(torch.optim.Adam, lr=1e-2, weight_decay=1e-4),
    "adam_amsgrad": functools.partial(torch.optim.Adam, lr=1e-2, amsgrad=True),
    "sgd_momentum": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True),
}


def _steps(loop: torch.optim.Optimizer, fast: torch.optim.Optimizer, ps, qs) -> None:
    """40 steps of both on the same random gradients."""
    for _ in range(40):
        for p, q in zip(ps, qs, strict=True):
            g = torch.randn_like(p) * 10
            p.grad, q.grad = g.clone(), g.clone()
        loop.step()
        fast.step()


def _params() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 3, 2), (1,)]
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    return ps, [p.detach().clone().requires_grad_() for p in ps]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_foreach_steps_equal_the_for_loop_bit_for_bit(name):
    ps, qs = _params()
    loop = OPTIMIZERS[name](ps)
    fast = foreach_on_cpu(OPTIMIZERS[name](qs))
    assert loop.param_groups[0]["foreach"] is None and fast.param_groups[0]["foreach"] is True
    _steps(loop, fast, ps, qs)
    assert all(torch.equal(p, q) for p, q in zip(ps, qs, strict=True))


@pytest.mark.parametrize("name", ["adamw", "adam_l2", "adam_amsgrad"])
def test_fused_steps_equal_the_for_loop_within_rounding(name):
    ps, qs = _params()
    loop = OPTIMIZERS[name](ps)
    fast = fused_on_cpu(OPTIMIZERS[name](qs))
    assert fast.param_groups[0]["fused"] is True and fast.param_groups[0]["foreach"] is None
    _steps(loop, fast, ps, qs)
    moved = max(
        float((p - p0).detach().abs().max()) for p, p0 in zip(ps, _params()[0], strict=True)
    )
    assert moved > 0.01  # the steps did move the parameters
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_other_optimizers_take_foreach():
    w = torch.nn.Parameter(torch.zeros(3))
    sgd = fused_on_cpu(torch.optim.SGD([w], lr=0.1))
    assert sgd.param_groups[0]["foreach"] is True and not sgd.param_groups[0]["fused"]


def test_a_choice_made_by_the_user_is_kept():
    w = torch.nn.Parameter(torch.zeros(3))
    assert foreach_on_cpu(torch.optim.AdamW([w], foreach=False)).param_groups[0]["foreach"] is False
    fused = foreach_on_cpu(torch.optim.AdamW([w], fused=True))
    assert fused.param_groups[0]["foreach"] is None and fused.param_groups[0]["fused"] is True
    lbfgs = torch.optim.LBFGS([w])  # takes no foreach: left as it is
    assert foreach_on_cpu(lbfgs) is lbfgs and "foreach" not in lbfgs.param_groups[0]
    assert fused_on_cpu(lbfgs) is lbfgs and "foreach" not in lbfgs.param_groups[0]
    assert foreach_on_cpu("not an optimizer") == "not an optimizer"
    assert fused_on_cpu("not an optimizer") == "not an optimizer"
    loop = fused_on_cpu(torch.optim.AdamW([w], foreach=False)).param_groups[0]
    assert loop["foreach"] is False and loop["fused"] is None
    # fused=False: the foreach implementation (the for-loop's values, bit for bit)
    unfused = fused_on_cpu(torch.optim.AdamW([w], fused=False)).param_groups[0]
    assert unfused["fused"] is False and unfused["foreach"] is True
    kept = fused_on_cpu(torch.optim.AdamW([w], foreach=True)).param_groups[0]
    assert kept["foreach"] is True and kept["fused"] is None


def _fit(tmp_path, **optimizer) -> tuple[pl.Trainer, dict[str, torch.Tensor]]:
    data = SyntheticTabularDataModule(n_train=256, n_eval=64, batch_size=32)
    pl.seed_everything(0)
    model = MultiTaskModule(
        data.tasks,
        trunk=DenseTrunk(data.n_features, divisors=[4, 12, 20], dropout=0.1),
        head_hidden=16,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, **optimizer),
    )
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False
    )
    trainer.fit(model, data)
    values = {
        **model.state_dict(),
        **{k: torch.as_tensor(v) for k, v in trainer.logged_metrics.items()},
    }
    return trainer, values


def test_a_fit_with_the_package_default_matches_the_for_loop_fit(tmp_path):
    trainer, fast = _fit(tmp_path / "fast")
    assert trainer.optimizers[0].param_groups[0]["fused"] is True
    _, loop = _fit(tmp_path / "loop", foreach=False)
    _, foreach = _fit(tmp_path / "foreach", foreach=True)
    assert fast.keys() == loop.keys() == foreach.keys()
    different = [k for k in foreach if not torch.equal(foreach[k], loop[k])]
    assert not different, different
    assert any(not torch.equal(fast[k], loop[k]) for k in fast)  # fused: not bit for bit
    for key in fast:
        if key.startswith("trunk.blocks.") and key.endswith((".0.bias", ".running_mean")):
            # a Linear's bias in front of a BatchNorm gets no gradient but float noise, which
            # Adam scales to steps of about lr: it drifts (and the running mean with it)
            # without changing any output
            torch.testing.assert_close(fast[key], loop[key], rtol=0, atol=0.01, msg=key)
        elif "/" in key and not key.endswith("loss"):  # a metric of 64 predictions
            torch.testing.assert_close(fast[key], loop[key], rtol=0, atol=0.02, msg=key)
        else:  # every other parameter and buffer, and the losses
            torch.testing.assert_close(fast[key], loop[key], rtol=1e-4, atol=1e-5, msg=key)


def test_the_attackers_take_the_fused_implementation():
    ensemble = AttackerEnsemble(8, 3, hidden=[0, 16], steps=1, memory=16, lr=1e-3)
    assert all(g["fused"] is True for g in ensemble.optimizer.param_groups)
