"""Mixed precision: every strategy trains under bf16-mixed on CPU; under 16-mixed the gradients
written by hand carry the GradScaler's scale, so a step matches the float32 step."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from test_conformance import STRATEGIES, _data

from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn import CNNTrunk


def _fit(name: str, steps: int, **trainer_kw) -> MultiTaskModule:
    pl.seed_everything(0, verbose=False)
    dm = _data()
    model = MultiTaskModule(
        dm.tasks,
        trunk=CNNTrunk(dropout=0.0),
        weighting=STRATEGIES[name](),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        lr_scheduler=None,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kw,
    )
    trainer.fit(model, dm)
    return model


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_bf16_mixed_on_cpu(name):
    model = _fit(name, 2, precision="bf16-mixed")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(w)) for w in model.weighting.last_weights.values())


def _fp16() -> MixedPrecision:
    # Lightning offers 16-mixed on GPUs; on CPU the plugin takes a CPU GradScaler explicitly
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))


@pytest.mark.parametrize(
    "name", ["static", "uncertainty", "famo", "gradnorm", "upgrad", "upgrad_rep"]
)
def test_16_mixed_step_matches_float32(name):
    start = _fit(name, 0)
    full = _fit(name, 1)
    half = _fit(name, 1, plugins=[_fp16()])
    for (key, p0), p32, p16 in zip(
        start.named_parameters(), full.parameters(), half.parameters(), strict=True
    ):
        d32, d16 = (p32 - p0).detach().flatten(), (p16 - p0).detach().flatten()
        if d32.norm() < 1e-6:
            continue
        # a gradient left scaled by 4096 (or unscaled twice) would be off by orders of magnitude
        assert float(d16.norm() / d32.norm()) == pytest.approx(1.0, abs=0.1), key
        assert torch.nn.functional.cosine_similarity(d16, d32, dim=0) > 0.98, key
