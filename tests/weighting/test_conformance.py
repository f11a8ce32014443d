"""Every strategy: finite weights, a differentiable total, checkpoint round trip and resume, CLI."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from mtl_lightning.adversary import AdversaryConfig
from mtl_lightning.commands import main
from mtl_lightning.data import SyntheticSpeechDataModule
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn import CNNTrunk
from mtl_lightning.weighting import (
    GradientWeighting,
    JacobianAggregation,
    StaticWeighting,
)
from tests.weighting._strategies import strategy_factories

ROOT = Path(__file__).resolve().parents[2]
warnings.filterwarnings("ignore", ".*does not have many workers.*")

STRATEGIES = strategy_factories("speaker")
_W = "mtl_lightning.weighting."
_AGG = [f"{_W}JacobianAggregation", "--model.weighting.aggregator"]
CLI_WEIGHTING = {
    "static": [f"{_W}StaticWeighting"],
    "inverse_metric": [f"{_W}InverseMetricWeighting"],
    "uncertainty": [f"{_W}UncertaintyWeighting"],
    "dwa": [f"{_W}DynamicWeightAverage"],
    "rlw": [f"{_W}RandomLossWeighting"],
    "famo": [f"{_W}FAMO"],
    "gradnorm": [f"{_W}GradNorm"],
    "gradnorm_rep": [f"{_W}GradNorm", "--model.weighting.level", "rep"],
    "upgrad": [f"{_W}JacobianAggregation"],
    "upgrad_rep": [f"{_W}JacobianAggregation", "--model.weighting.level", "rep"],
    "mgda": [*_AGG, "torchjd.aggregation.MGDA"],
    "pcgrad": [*_AGG, "torchjd.aggregation.PCGrad"],
}


def _data(**kw) -> SyntheticSpeechDataModule:
    return SyntheticSpeechDataModule(
        per_pair=2, per_pair_eval=1, n_mels=16, frames=16, batch_size=32, speaker_role="main", **kw
    )


def _trainer(tmp_path, epochs: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
        deterministic=True,
        **kw,
    )


class _WeightsLogged(pl.Callback):
    """After every training batch: ``train/weight/{task}`` is logged for every task and equals
    the strategy's ``last_weights``."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        prefix = "train/weight/"
        logged = {
            k[len(prefix) :]: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(prefix)
        }
        assert set(logged) == {t.name for t in pl_module.tasks}
        assert logged == pytest.approx(pl_module.weighting.last_weights, rel=1e-6, abs=1e-6)
        self.checked += 1


def _fit(tmp_path, make, epochs, ckpt_path=None, callbacks=None, **trainer_kw):
    pl.seed_everything(0, verbose=False)
    dm = _data()
    # no dropout: the global RNG is not part of a plain Trainer checkpoint
    model = MultiTaskModule(dm.tasks, trunk=CNNTrunk(dropout=0.0), weighting=make())
    checkpointing = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks or [])
    trainer = _trainer(
        tmp_path,
        epochs,
        callbacks=callbacks or [],
        enable_checkpointing=checkpointing,
        **trainer_kw,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_trains_with_finite_weights_and_round_trips(name, tmp_path):
    make = STRATEGIES[name]
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, filename="{epoch}")
    logged = _WeightsLogged()
    model, trainer = _fit(tmp_path, make, epochs=2, callbacks=[ckpt, logged])
    weights = model.weighting.last_weights
    assert set(weights) == {"emotion", "speaker"}
    assert all(torch.isfinite(torch.tensor(w)) for w in weights.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert logged.checked == trainer.global_step == 2 * trainer.num_training_batches

    # differentiable total for loss-based strategies
    dm = _data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    fresh = MultiTaskModule(dm.tasks, weighting=make())
    if fresh.automatic_optimization:
        total = fresh.shared_step(batch, 0, "train")
        total.backward()
        assert all(p.grad is not None for p in fresh.trunk.parameters())

    # checkpoint round trip: the weighting state comes back exactly
    restored = MultiTaskModule(dm.tasks, weighting=make())
    state = torch.load(tmp_path / "ck" / "epoch=1.ckpt", weights_only=True)["state_dict"]
    restored.load_state_dict(state)
    for key, value in model.weighting.state_dict().items():
        assert torch.equal(restored.weighting.state_dict()[key], value), key


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_resumed_run_continues_with_the_same_weights(name, tmp_path):
    make = STRATEGIES[name]
    # cheap: 2 batches an epoch, 1 validation batch (DWA still sees two epochs of history)
    small = {"limit_train_batches": 2, "limit_val_batches": 1}
    full, _ = _fit(tmp_path / "full", make, epochs=3, **small)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, filename="{epoch}")
    _fit(tmp_path / "part", make, epochs=2, callbacks=[ckpt], **small)
    resumed, _ = _fit(
        tmp_path / "res", make, epochs=3, ckpt_path=str(tmp_path / "ck" / "epoch=1.ckpt"), **small
    )
    for key, value in full.weighting.state_dict().items():
        torch.testing.assert_close(resumed.weighting.state_dict()[key], value, msg=key)
    assert resumed.weighting.last_weights == pytest.approx(full.weighting.last_weights)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, msg=k)


class _Ones(GradientWeighting):
    """Every task weight 1: the aggregated update is the plain sum of the task gradients."""

    def gramian_weights(self, gramian, losses, jacobian=None):
        return torch.ones(gramian.shape[0])


@pytest.mark.parametrize("level", ["shared", "rep"])
@pytest.mark.parametrize("speaker_role", ["main", "adversarial", "ensemble"])
def test_manual_path_with_unit_weights_equals_the_plain_sum(level, speaker_role, tmp_path):
    """The hand-written gradient path (per-task gradients, .grad, optimizer step, adversaries
    added after aggregation) with unit weights reproduces automatic optimisation of the sum;
    ``ensemble``: the speaker's attackers and its hsic objective (adversary room)."""
    models = []
    for weighting in (StaticWeighting(), _Ones(level)):
        pl.seed_everything(0, verbose=False)
        dm = (
            _data()
            if speaker_role == "main"
            else SyntheticSpeechDataModule(
                per_pair=2,
                per_pair_eval=1,
                n_mels=16,
                frames=16,
                batch_size=32,
                speaker_adversary="hsic" if speaker_role == "ensemble" else "reversal",
            )
        )
        ensemble = AdversaryConfig(attackers=[0, 8], steps=2, optimizer="sgd", erase=True)
        model = MultiTaskModule(
            dm.tasks,
            trunk=CNNTrunk(dropout=0.0),
            weighting=weighting,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
            grl_lambda=0.7,
            adversary_config=ensemble if speaker_role == "ensemble" else None,
        )
        if models:  # identical initial parameters
            model.load_state_dict(models[0].initial, strict=False)
        else:
            model.initial = copy.deepcopy(model.state_dict())
        trainer = _trainer(tmp_path, 1, limit_val_batches=0, enable_checkpointing=False)
        trainer.fit(model, dm)
        models.append(model)
    plain, manual = models
    assert plain.automatic_optimization and not manual.automatic_optimization
    manual_state = manual.state_dict()
    compared = 0
    for key, value in plain.state_dict().items():
        tensor = isinstance(value, torch.Tensor) and value.is_floating_point()
        if key.startswith(("trunk.", "heads.", "adversaries.")) and tensor:
            torch.testing.assert_close(manual_state[key], value, atol=1e-5, rtol=1e-4, msg=key)
            compared += 1
    assert compared > 10
    key = "trunk.project.2.weight"
    assert not torch.equal(plain.initial[key], plain.state_dict()[key])  # it did train


@pytest.mark.parametrize("name", list(CLI_WEIGHTING))
def test_fast_dev_run_through_the_cli(name, in_tmp):
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "speaker_adversarial.yaml"),
        "--trainer.fast_dev_run",
        "true",
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.speaker_role",
        "main",
        "--data.init_args.per_pair",
        "2",
        "--data.init_args.per_pair_eval",
        "1",
        "--model.weighting",
        *CLI_WEIGHTING[name],
    ]
    cli = main(args)
    assert cli.trainer.global_step == 1
    expected = STRATEGIES[name]()
    assert type(cli.model.weighting) is type(expected)
    assert getattr(cli.model.weighting, "level", None) == getattr(expected, "level", None)
    aggregator = getattr(expected, "aggregator", None)
    if aggregator is not None:
        assert type(cli.model.weighting.aggregator) is type(aggregator)


@pytest.mark.parametrize(("name", "extra"), [("CAGrad", "cagrad"), ("NashMTL", "nash_mtl")])
def test_optional_solver_missing_names_the_extra(name, extra):
    import importlib.util

    import torchjd.aggregation as aggregation

    if importlib.util.find_spec("cvxpy") is not None:
        pytest.skip("cvxpy is installed: the optional solvers are available")
    kwargs = {"c": 0.5} if name == "CAGrad" else {"n_tasks": 2}
    with pytest.raises(ImportError, match=rf'pip install "torchjd\[{extra}\]"'):
        JacobianAggregation(getattr(aggregation, name)(**kwargs))
