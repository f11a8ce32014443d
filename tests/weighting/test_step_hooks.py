"""The module's optimizer-step wiring of the strategies: FAMO's post-step update (once per
optimizer step, on the same batch) against a hand-written training loop, and the strategy's
parameters in their own optimizer group without weight decay, across a resume."""

from __future__ import annotations

import copy
import functools
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn.dense import DenseTrunk
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import FAMO, UncertaintyWeighting

warnings.filterwarnings("ignore", ".*does not have many workers.*")
TASKS = [TaskSpec("a", 3), TaskSpec("b", 1, kind="regression")]


def _batches(n: int = 8, size: int = 4) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "features": torch.randn(size, 6, generator=gen),
            "targets": {
                "a": torch.randint(0, 3, (size,), generator=gen),
                "b": torch.randn(size, generator=gen),
            },
        }
        for _ in range(n)
    ]


def _model(weighting, **kw) -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(
        TASKS, trunk=DenseTrunk(6, widths=[8, 8], dropout=0.0), weighting=weighting, **kw
    )


def _trainer(tmp_path, **kw) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(**{**options, **kw})


def _loader(batches: list[dict]) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(batches, batch_size=None)


def _official_weights(logits: torch.Tensor, losses: torch.Tensor) -> list[float]:
    """FAMO's official loss ``sum_k log(L_k) z_k / c`` differentiated in L, times K."""
    losses = losses.clone().requires_grad_(True)
    z = F.softmax(logits, -1)
    c = (z / (losses.detach() + 1e-8)).sum()
    (grad,) = torch.autograd.grad(((losses + 1e-8).log() * z / c).sum(), losses)
    return (len(losses) * grad).tolist()


def _reference_famo_run(model: MultiTaskModule, batches: list[dict], accumulate: int):
    """The paper's loop by hand: per optimizer step, the micro-batches' weighted losses are
    accumulated, SGD steps, the last micro-batch is run again (no grad) and the logits take
    Adam's step (weight decay gamma) on the log-loss change of that batch."""
    logits = torch.zeros(2, requires_grad=True)
    logit_opt = torch.optim.Adam([logits], lr=0.025, weight_decay=0.001)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for start in range(0, len(batches), accumulate):
        for i in range(start, start + accumulate):
            losses = model.forward_losses(batches[i], i).losses
            before = torch.stack([losses["a"], losses["b"]]).detach()
            w = _official_weights(logits.detach(), before)
            (w[0] * losses["a"] + w[1] * losses["b"]).div(accumulate).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():  # on a copy: the run's own BatchNorm statistics stay as they are
            after = copy.deepcopy(model).forward_losses(batches[i], i).losses
        delta = before.log() - torch.stack([after["a"], after["b"]]).log()
        (grad,) = torch.autograd.grad(F.softmax(logits, -1), logits, grad_outputs=delta)
        logits.grad = grad
        logit_opt.step()
    return logits.detach()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_famo_updates_once_per_optimizer_step_on_the_same_batch(tmp_path, accumulate):
    batches = _batches()
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    model = _model(FAMO(), optimizer=sgd)
    reference = copy.deepcopy(model)
    _trainer(tmp_path, accumulate_grad_batches=accumulate).fit(model, _loader(batches))
    expected = _reference_famo_run(reference, batches, accumulate)
    assert int(model.weighting.adam_t) == len(batches) // accumulate  # once per step
    torch.testing.assert_close(model.weighting.logits, expected)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    bn, bn_ref = model.trunk.blocks[0][1], reference.trunk.blocks[0][1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)  # the rerun left them


def test_famo_next_batch_updates_once_per_optimizer_step(tmp_path):
    model = _model(FAMO(update="next_batch"))
    _trainer(tmp_path, accumulate_grad_batches=2).fit(model, _loader(_batches()))
    # 4 optimizer steps; each update runs at the first forward after a step: 3 so far
    assert int(model.weighting.adam_t) == 3
    assert bool(model.weighting.stepped)


def test_strategy_parameters_get_no_weight_decay_and_groups_survive_a_resume(tmp_path):
    adamw = functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.05)
    model = _model(UncertaintyWeighting(), optimizer=adamw)
    optimizer = model.configure_optimizers()
    model_group, strategy_group = optimizer.param_groups
    assert model_group["weight_decay"] == 0.05 and strategy_group["weight_decay"] == 0.0
    assert strategy_group["params"] == [model.weighting.log_vars]
    expected = {id(p) for p in model.parameters()} - {id(model.weighting.log_vars)}
    assert {id(p) for p in model_group["params"]} == expected
    default = _model(UncertaintyWeighting()).configure_optimizers()  # AdamW's 0.01 for the rest
    assert [g["weight_decay"] for g in default.param_groups] == [0.01, 0.0]
    assert len(_model(FAMO()).configure_optimizers().param_groups) == 1  # no parameters

    batches = _batches(4)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(tmp_path, enable_checkpointing=True, callbacks=[ckpt]).fit(model, _loader(batches))
    resumed = _model(UncertaintyWeighting(), optimizer=adamw)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(resumed, _loader(batches), ckpt_path=ckpt.last_model_path)
    groups = trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert int(trainer.optimizers[0].state[resumed.weighting.log_vars]["step"]) == 8
