"""`foreach_on_cpu`: torch's foreach optimizer implementation on the CPU, bit for bit the values
of its default for-loop one, in the optimizers the package builds and in a whole fit."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch

from mtl_lightning import MultiTaskModule
from mtl_lightning.adversary.attackers import AttackerEnsemble
from mtl_lightning.data import SyntheticTabularDataModule
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.optim import foreach_on_cpu

OPTIMIZERS = {
    "adamw": functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4),
    "adam_l2": functools.partial(torch.optim.Adam, lr=1e-2, weight_decay=1e-4),
    "sgd_momentum": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_foreach_steps_equal_the_for_loop_bit_for_bit(name):
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 3, 2), (1,)]
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    loop = OPTIMIZERS[name](ps)
    fast = foreach_on_cpu(OPTIMIZERS[name](qs))
    assert loop.param_groups[0]["foreach"] is None and fast.param_groups[0]["foreach"] is True
    for _ in range(40):
        for p, q in zip(ps, qs, strict=True):
            g = torch.randn_like(p) * 10
            p.grad, q.grad = g.clone(), g.clone()
        loop.step()
        fast.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs, strict=True))


def test_a_choice_made_by_the_user_is_kept():
    w = torch.nn.Parameter(torch.zeros(3))
    assert foreach_on_cpu(torch.optim.AdamW([w], foreach=False)).param_groups[0]["foreach"] is False
    fused = foreach_on_cpu(torch.optim.AdamW([w], fused=True))
    assert fused.param_groups[0]["foreach"] is None and fused.param_groups[0]["fused"] is True
    lbfgs = torch.optim.LBFGS([w])  # takes no foreach: left as it is
    assert foreach_on_cpu(lbfgs) is lbfgs and "foreach" not in lbfgs.param_groups[0]
    assert foreach_on_cpu("not an optimizer") == "not an optimizer"


def _fit(foreach: bool | None, tmp_path) -> dict[str, torch.Tensor]:
    data = SyntheticTabularDataModule(n_train=256, n_eval=64, batch_size=32)
    pl.seed_everything(0)
    model = MultiTaskModule(
        data.tasks,
        trunk=DenseTrunk(data.n_features, divisors=[4, 12, 20], dropout=0.1),
        head_hidden=16,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, foreach=foreach),
    )
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False
    )
    trainer.fit(model, data)
    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[0]["foreach"] is (True if foreach is None else foreach)
    return {
        **model.state_dict(),
        **{k: torch.as_tensor(v) for k, v in trainer.logged_metrics.items()},
    }


def test_a_fit_with_the_package_default_equals_the_for_loop_fit(tmp_path):
    fast, loop = _fit(None, tmp_path / "fast"), _fit(False, tmp_path / "loop")
    assert fast.keys() == loop.keys()
    different = [k for k in fast if not torch.equal(fast[k], loop[k])]
    assert not different, different


def test_the_attackers_take_the_foreach_implementation():
    ensemble = AttackerEnsemble(8, 3, hidden=[0, 16], steps=1, memory=16, lr=1e-3)
    assert all(g["foreach"] is True for g in ensemble.optimizer.param_groups)
