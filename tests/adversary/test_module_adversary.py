"""Attacker ensembles inside MultiTaskModule: bad settings rejected before training, the worst
case logged, the attackers kept out of the trunk's optimizer, both optimisation paths."""

import lightning.pytorch as pl
import pytest
import torch

from mtl_lightning import MultiTaskModule, TaskSpec
from mtl_lightning.adversary import AdversaryConfig
from mtl_lightning.data import SyntheticSpeechDataModule
from mtl_lightning.weighting import JacobianAggregation

TASKS = [TaskSpec("emotion", 5), TaskSpec("speaker", 11, role="adversarial", adversary="hsic")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attackers": []}, "attackers must list at least one attacker"),
        ({"steps": 0}, r"steps \(k\) must be an integer >= 1"),
        ({"objective": "entropy"}, "unknown objective 'entropy'"),
        ({"lr_multiplier": 0.0}, "lr_multiplier must be > 0"),
        ({"attackers": [0, -4]}, "attackers are hidden widths"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversaryConfig(**kwargs)


@pytest.mark.parametrize(
    ("tasks", "name", "message"),
    [
        (TASKS, "emotion", "'emotion' has role='main'"),
        (
            [TaskSpec("e", 5), TaskSpec("age", 1, kind="regression", role="adversarial")],
            "age",
            "'age' is regression",
        ),
        (TASKS, "spk", "no such task"),
    ],
)
def test_per_task_settings_on_a_wrong_task_fail_before_training(tasks, name, message):
    with pytest.raises(ValueError, match=message):
        MultiTaskModule(tasks, adversaries={name: AdversaryConfig(erase=True)})


def test_hsic_on_a_regression_task_is_rejected_by_the_task():
    with pytest.raises(ValueError, match="'age': the hsic adversary needs classification"):
        TaskSpec("age", 1, kind="regression", role="adversarial", adversary="hsic")


def _tiny_data(**kwargs):
    return SyntheticSpeechDataModule(
        per_pair=2, per_pair_eval=1, n_mels=16, frames=16, batch_size=22, **kwargs
    )


def _fit(model, data, epochs=1, **trainer):
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    t = pl.Trainer(max_epochs=epochs, accelerator="cpu", **{**options, **trainer})
    t.fit(model, data)
    return t


def test_the_task_metrics_are_the_best_attackers_and_the_attackers_have_their_own_optimizer():
    data = _tiny_data(speaker_adversary="hsic")
    model = MultiTaskModule(
        data.tasks, adversary_config=AdversaryConfig(attackers=[0, 16], steps=2)
    )
    assert "speaker" not in model.heads and "speaker" in model.adversaries
    trainer = _fit(model, data)
    m = trainer.callback_metrics
    per_attacker = [float(m[f"val/speaker/attacker/{i}/balanced_acc"]) for i in range(2)]
    assert float(m["val/speaker/balanced_acc"]) == pytest.approx(max(per_attacker))
    assert int(model.adversaries["speaker"].best) == per_attacker.index(max(per_attacker))
    for key in ("acc", "f1", "loss", "objective"):
        assert f"val/speaker/{key}" in m and f"train/speaker/{key}" in m
    attackers = {id(p) for p in model.adversaries.parameters()}
    main = trainer.optimizers[0]
    assert not any(id(p) in attackers for g in main.param_groups for p in g["params"])
    lr = main.param_groups[0]["lr"]
    assert model.adversaries["speaker"].attackers.optimizer.param_groups[0]["lr"] == pytest.approx(
        5.0 * lr
    )
    # forward() and predict answer for the speaker with the best attacker
    out = model.eval()(torch.zeros(3, 1, 16, 16))
    assert out["speaker"].shape == (3, 11)


def test_the_trunk_gets_lambda_times_the_objective_gradient_and_nothing_from_the_attackers():
    torch.manual_seed(0)
    model = MultiTaskModule(TASKS, adversary_config=AdversaryConfig(attackers=[0], steps=1))
    model.grl_lambda = 2.5
    x = torch.randn(22, 1, 40, 64)
    batch = {
        "features": x,
        "targets": {"emotion": torch.arange(22) % 5, "speaker": torch.arange(22) % 11},
    }
    step = model.forward_losses(batch, 0, train_adversaries=True)
    total = model.combine_losses(step.losses) + model.adversary_total(step, "train")
    grads = torch.autograd.grad(total, list(model.trunk.parameters()), retain_graph=True)
    # by hand: the emotion loss plus 2.5 x the objective, through the same embedding
    reference = step.losses["emotion"] + 2.5 * step.objectives["speaker"]
    expected = torch.autograd.grad(reference, list(model.trunk.parameters()))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert not step.losses["speaker"].requires_grad  # the attackers' loss trains no trunk


def test_the_manual_gradient_path_runs_the_ensemble_and_steps_the_attackers():
    data = _tiny_data(speaker_adversary="confusion")
    from torchjd.aggregation import UPGrad

    model = MultiTaskModule(
        data.tasks,
        adversary_config=AdversaryConfig(attackers=[0], steps=1),
        weighting=JacobianAggregation(UPGrad(), level="rep"),
    )
    before = model.adversaries["speaker"].attackers.attackers[0][1].weight.clone()
    trainer = _fit(model, data, epochs=1)
    assert not model.automatic_optimization
    assert not torch.equal(before, model.adversaries["speaker"].attackers.attackers[0][1].weight)
    assert torch.isfinite(trainer.callback_metrics["train/speaker/objective"])


def test_erasure_between_trunk_and_heads_is_fitted_each_epoch_and_checkpointed(tmp_path):
    data = _tiny_data(speaker_adversary="hsic")
    model = MultiTaskModule(data.tasks, adversary_config=AdversaryConfig(attackers=[0], erase=True))
    trainer = _fit(model, data)
    eraser = model.adversaries["speaker"].eraser
    assert bool(eraser.fitted) and not torch.equal(eraser.projection, torch.eye(128))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = MultiTaskModule.load_from_checkpoint(path)
    torch.testing.assert_close(loaded.adversaries["speaker"].eraser.projection, eraser.projection)
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(loaded.eval().embed(x), model.eval().embed(x))


def test_bf16_mixed_keeps_the_attackers_in_float32():
    data = _tiny_data(speaker_adversary="reversal")
    model = MultiTaskModule(data.tasks, adversary_config=AdversaryConfig(attackers=[0, 8], steps=2))
    trainer = _fit(model, data, epochs=1, precision="bf16-mixed")
    assert all(p.dtype == torch.float32 for p in model.adversaries.parameters())
    m = trainer.callback_metrics
    assert torch.isfinite(m["train/speaker/objective"]) and torch.isfinite(m["val/speaker/loss"])
