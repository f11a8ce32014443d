"""Checkpoints know their config: evaluated alone they bring their run's config; a config that
does not fit them is a short error; every CLI run keeps a last.ckpt; `last` never means untrained."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from mtl_lightning.checks import CheckpointFileError
from mtl_lightning.commands import main
from mtl_lightning.run_config import RunConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def five_task_run(tmp_path_factory) -> Path:
    """A user's own config listing no callbacks (so no ModelCheckpoint), fitted for one epoch."""
    work = tmp_path_factory.mktemp("five")
    config = yaml.safe_load((ROOT / "configs" / "five_task_affinity.yaml").read_text())
    del config["trainer"]["callbacks"]
    config["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    config["data"]["init_args"].update(n_train=256, n_eval=64)
    (work / "mine.yaml").write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        main(["fit", "--config", "mine.yaml"])
    finally:
        os.chdir(cwd)
    return work / "lightning_logs" / "version_0"


def test_a_config_without_model_checkpoint_still_keeps_last_ckpt(five_task_run):
    assert (five_task_run / "checkpoints" / "last.ckpt").is_file()


def test_a_checkpoint_tested_alone_brings_its_runs_config(five_task_run, in_tmp, capsys):
    # from another directory, without --config: the five tasks, not the packaged default's two
    main(["test", "--ckpt_path", str(five_task_run / "checkpoints" / "last.ckpt")])
    assert f"using the run's config {five_task_run / 'config.yaml'}" in capsys.readouterr().err
    summaries = list((in_tmp / "lightning_logs").glob("version_*/summary.json"))
    tested = json.loads(summaries[0].read_text())["test"]["tasks"]
    assert [t["task"] for t in tested] == ["t1", "t2", "t3", "t4", "t5"]


def test_a_config_that_does_not_fit_the_checkpoint_names_both_task_lists(five_task_run, in_tmp):
    ckpt = str(five_task_run / "checkpoints" / "last.ckpt")
    default = ["--data.init_args.per_pair", "1", "--data.init_args.per_pair_eval", "1"]
    with pytest.raises(RunConfigError) as error:
        main(["test", "--config", str(ROOT / "configs" / "speaker_baseline.yaml"), *default,
              "--ckpt_path", ckpt])  # fmt: skip
    message = str(error.value)
    assert "trained on tasks ['t1 (3)', 't2 (2)', 't3 (4)', 't4 (2)', 't5 (3)']" in message
    assert "declares ['emotion (5)', 'speaker (11)']" in message
    assert f"--config {five_task_run / 'config.yaml'}" in message


def test_ckpt_path_last_without_a_checkpoint_is_an_error_not_an_untrained_model(in_tmp):
    with pytest.raises(CheckpointFileError, match="no last.*ckpt of this experiment"):
        main(["test", "--ckpt_path", "last", "--data.init_args.per_pair", "1",
              "--data.init_args.per_pair_eval", "1"])  # fmt: skip
    assert not list(in_tmp.glob("lightning_logs/*/summary.json"))
