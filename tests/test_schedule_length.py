"""The default schedule anneals over the run's trainer.max_epochs, resumed runs included."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.commands import main
from mtl_lightning.optim import CosineAnnealingToMaxEpochs, fit_schedule_to_run

TINY = ["--data.init_args.per_pair", "1", "--data.init_args.per_pair_eval", "1"]


def test_max_epochs_3_anneals_over_3_epochs(in_tmp):
    cli = main(["fit", *TINY, "--trainer.max_epochs", "3"])
    (scheduler,) = cli.trainer.lr_scheduler_configs
    assert isinstance(scheduler.scheduler, CosineAnnealingToMaxEpochs)
    assert scheduler.scheduler.T_max == 3  # was the config's T_max: 20
    eta_min = scheduler.scheduler.eta_min
    # annealed to its floor at the end of the third epoch (it stayed near the top with T_max 20)
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(eta_min, rel=1e-9)
    saved = torch.load("lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)[
        "lr_schedulers"
    ][0]
    assert saved["T_max"] == 3


def test_a_resumed_run_anneals_over_its_new_length_and_a_given_t_max_is_kept():
    param = torch.zeros(1, requires_grad=True)
    following = CosineAnnealingToMaxEpochs(torch.optim.SGD([param], lr=1.0))
    fit_schedule_to_run(following, 3)
    state = following.state_dict()
    resumed = CosineAnnealingToMaxEpochs(torch.optim.SGD([param], lr=1.0))
    fit_schedule_to_run(resumed, 6)
    resumed.load_state_dict(state)
    assert resumed.T_max == 6 and resumed.last_epoch == state["last_epoch"]
    fixed = CosineAnnealingToMaxEpochs(torch.optim.SGD([param], lr=1.0), T_max=4)
    fit_schedule_to_run(fixed, 9)
    assert fixed.T_max == 4


def test_a_run_without_max_epochs_needs_t_max():
    schedule = CosineAnnealingToMaxEpochs(torch.optim.SGD([torch.zeros(1, requires_grad=True)]))
    try:
        fit_schedule_to_run(schedule, -1)
    except ValueError as error:
        assert "set max_epochs or the scheduler's T_max" in str(error)
    else:
        raise AssertionError("no error")
