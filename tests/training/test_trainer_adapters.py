"""The module's small functions of its trainer, its optimiser set-up and its argument handling,
checked on stand-ins (no Trainer, no DDP)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mtl_lightning import MultiTaskModule, TaskSpec
from mtl_lightning.training import trainer_adapters as adapters
from mtl_lightning.training.arguments import check_options, keep_plain_hparams
from mtl_lightning.training.optimizers import param_groups, step_schedulers, with_scheduler


class Strategy:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def reduce(self, tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        self.calls.append(reduce_op)
        return tensor * 2


def _trainer(world_size: int = 2, **extra: object) -> SimpleNamespace:
    return SimpleNamespace(world_size=world_size, strategy=Strategy(), **extra)


def test_reductions_are_the_identity_without_ddp() -> None:
    t = torch.ones(2)
    for reduce in (adapters.reduce_sum, adapters.reduce_mean):
        assert reduce(None, t) is t
        single = _trainer(world_size=1)
        assert reduce(single, t) is t and single.strategy.calls == []


def test_reductions_use_the_strategy_under_ddp() -> None:
    trainer = _trainer()
    assert adapters.reduce_sum(trainer, torch.ones(1)).tolist() == [2.0]
    assert adapters.reduce_mean(trainer, torch.ones(1)).tolist() == [2.0]
    assert trainer.strategy.calls == ["sum", "mean"]


class Scaler:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def is_enabled(self) -> bool:
        return self.enabled

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        return t * 1024


def test_loss_scale_is_the_amp_scale_or_one() -> None:
    cpu = torch.device("cpu")
    assert adapters.loss_scale(None, cpu) == 1.0
    assert adapters.loss_scale(_trainer(precision_plugin=SimpleNamespace()), cpu) == 1.0
    off = SimpleNamespace(scaler=Scaler(enabled=False))
    assert adapters.loss_scale(_trainer(precision_plugin=off), cpu) == 1.0
    on = SimpleNamespace(scaler=Scaler(enabled=True))
    assert adapters.loss_scale(_trainer(precision_plugin=on), cpu) == 1024.0


def test_cadence_and_progress_bar_without_a_trainer() -> None:
    assert adapters.should_log_step(None, 50) is False
    assert adapters.shows_progress_bar(None) is False
    assert adapters.shows_progress_bar(_trainer(progress_bar_callback=None)) is False
    assert adapters.shows_progress_bar(_trainer(progress_bar_callback=object())) is True


@pytest.mark.parametrize(("ready", "resumes"), [(0, False), (3, True), (10, False)])
def test_resumes_mid_epoch(ready: int, resumes: bool) -> None:
    current = SimpleNamespace(ready=ready)
    loop = SimpleNamespace(
        epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=current))
    )
    trainer = SimpleNamespace(fit_loop=loop, num_training_batches=10)
    assert adapters.resumes_mid_epoch(trainer) is resumes


def test_param_groups_leave_out_the_attackers_and_group_the_strategy() -> None:
    model, attacker, strategy = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    groups = param_groups([model, attacker, strategy], [attacker], [strategy])
    assert groups == [{"params": [model]}, {"params": [strategy], "weight_decay": 0.0}]
    assert param_groups(iter([model, attacker]), iter([attacker]), iter([])) == [
        {"params": [model]}
    ]


def test_the_module_builds_the_same_groups() -> None:
    module = MultiTaskModule([TaskSpec("a", 2)], head_hidden=0)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [
        id(p) for p in module.parameters()
    ]


def test_with_scheduler_and_step_schedulers() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert with_scheduler(optimizer, None, None) is optimizer
    config = with_scheduler(optimizer, lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5), None)
    assert config["optimizer"] is optimizer and config["lr_scheduler"]["interval"] == "epoch"
    scheduler = config["lr_scheduler"]["scheduler"]
    optimizer.step()  # (no gradients: a no-op) the order the schedulers expect
    step_schedulers(scheduler)
    step_schedulers([scheduler, None])
    step_schedulers(None)
    assert optimizer.param_groups[0]["lr"] == 0.25


def test_check_options_names_the_bad_one() -> None:
    check_options(0, "raise")
    with pytest.raises(ValueError, match="grad_cos_every_n_steps must be >= 0, got -2"):
        check_options(-2, "typo")  # the first invalid option is named
    with pytest.raises(ValueError, match="nonfinite must be 'raise', 'skip' or 'off', got 'x'"):
        check_options(1, "x")


def test_keep_plain_hparams_drops_live_objects_and_keeps_plain_data() -> None:
    trunk = {"class_path": "mtl_lightning.nn.CNNTrunk"}
    hparams = {"trunk": trunk, "optimizer": lambda p: None, "lr_scheduler": None, "other": 3}
    keep_plain_hparams(hparams, [TaskSpec("a", 2)], None, None)
    assert "optimizer" not in hparams and hparams["trunk"] is trunk and hparams["other"] == 3
    assert hparams["tasks"] == [TaskSpec("a", 2).to_dict()]
    assert hparams["adversary_config"] is None and hparams["adversaries"] is None
