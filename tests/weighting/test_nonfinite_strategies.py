"""Non-finite gradients never reach a gradient strategy's state: an overflowing 16-mixed step
is handed to the GradScaler (which skips it and lowers its scale), and in float32 the
``nonfinite`` policy raises or skips, with the strategy's state as it was."""

from __future__ import annotations

import functools
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from test_conformance import STRATEGIES, _data
from torch import nn

from mtl_lightning.module import MultiTaskModule, NonFiniteError
from mtl_lightning.nn import CNNTrunk

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def _trainer(steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _model(name: str, trunk: nn.Module, **kw) -> MultiTaskModule:
    return MultiTaskModule(
        _data().tasks,
        trunk=trunk,
        weighting=STRATEGIES[name](),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        **kw,
    )


@pytest.mark.parametrize("name", ["gradnorm", "gradnorm_rep"])
def test_overflowing_16_mixed_steps_leave_gradnorm_finite_and_training_resumes(name):
    pl.seed_everything(0, verbose=False)
    model = _model(name, CNNTrunk(dropout=0.0))
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    # a scale of 2**24 overflows fp16 gradients: the scaler skips steps, halving it each time
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    trainer = _trainer(10, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(model, _data())
    assert scaler.get_scale() < 2.0**20  # it did overflow, several times
    weights = model.weighting.weights
    assert torch.isfinite(weights).all(), weights
    assert bool(model.weighting.initialised.all())  # updated once the scale had come down ...
    assert not torch.allclose(weights, torch.ones_like(weights))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    moved = [k for k, p in model.named_parameters() if not torch.equal(p.detach(), start[k])]
    assert any(k.startswith("trunk.") for k in moved)  # ... and the trunk trained again


class _NaNGrad(torch.autograd.Function):
    """Identity forward; a NaN gradient backward (finite losses, non-finite gradients)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class _PoisonableTrunk(nn.Module):
    """A small trunk whose first layer gets NaN gradients while ``armed``; the embedding's own
    gradient stays finite, so at ``level="rep"`` the Gramian the strategy sees is finite and
    only the trunk's update is not."""

    out_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Flatten(), nn.Linear(256, 16))
        self.second = nn.Linear(16, 16)
        self.armed = False

    def forward(self, x):
        h = self.first(x)
        return torch.tanh(self.second(_NaNGrad.apply(h) if self.armed else h))


class _PoisonFirstBatch(pl.Callback):
    """Arms the trunk for the first training batch; records the strategy's state right after."""

    def on_train_start(self, trainer, pl_module):
        self.fresh = {k: v.clone() for k, v in pl_module.weighting.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.trunk.armed = trainer.current_epoch == 0 and batch_idx == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == 0:
            self.after = {k: v.clone() for k, v in pl_module.weighting.state_dict().items()}


@pytest.mark.parametrize("name", ["gradnorm", "gradnorm_rep", "pcgrad", "upgrad_rep"])
def test_skipped_nonfinite_step_leaves_the_strategy_state_untouched(name):
    pl.seed_everything(0, verbose=False)
    model = _model(name, _PoisonableTrunk(), nonfinite="skip")
    probe = _PoisonFirstBatch()
    trainer = _trainer(3, max_epochs=2, callbacks=[probe])  # ends even if every step skips
    with pytest.warns(UserWarning, match=r"step 0, batch 0: skipped, non-finite"):
        trainer.fit(model, _data())
    assert int(model.skipped_steps) == 1
    assert trainer.global_step == 3  # training went on
    assert probe.after.keys() == probe.fresh.keys()
    for key, value in probe.fresh.items():
        assert torch.equal(probe.after[key], value), key
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(v).all() for v in model.weighting.state_dict().values())


def test_nonfinite_gradient_raises_naming_step_and_batch_before_the_strategy_runs():
    pl.seed_everything(0, verbose=False)
    model = _model("gradnorm", _PoisonableTrunk(), nonfinite="raise")
    trainer = _trainer(2, callbacks=[_PoisonFirstBatch()])
    with pytest.raises(NonFiniteError, match=r"step 0, batch 0: .*'emotion'"):
        trainer.fit(model, _data())
    assert not bool(model.weighting.initialised.any())
    assert torch.equal(model.weighting.weights, torch.ones(2))
