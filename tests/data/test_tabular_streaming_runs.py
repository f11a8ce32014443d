"""The tabular datamodules as users run them (configs/tabular_five_tasks.yaml, with
``data.class_path`` switched to the streaming one, Lightning's defaults on): two processes
against one, a run killed mid-epoch and resumed against an uninterrupted one, and predict from
the checkpoint naming each row's line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from _cli_run import ROOT, run_cli, run_in_process
from _ddp_helpers import assert_runs_match

from mtl_lightning.data import write_example_table

pytest.importorskip("litdata")

CONFIG = ROOT / "configs" / "tabular_five_tasks.yaml"
STREAMING = "mtl_lightning.data.StreamingTabularDataModule"
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
MID_EPOCH = [
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.every_n_train_steps=2",
    "--trainer.callbacks.save_top_k=-1",
    "--trainer.callbacks.filename=mid-{step}",
]


def _config(tmp_path: Path, table: Path, datamodule: str = STREAMING) -> Path:
    """The five-task config on ``datamodule``: LayerNorm, no dropout, SGD (per-process
    BatchNorm statistics and dropout streams would differ between 1 and 2 processes)."""
    config = yaml.safe_load(CONFIG.read_text())
    data = config["data"]
    data["class_path"] = datamodule
    data["init_args"]["path"] = str(table)
    if datamodule == STREAMING:
        data["init_args"].update(shard_dir=str(tmp_path / "shards"), block_rows=8, lanes=2,
                                 shuffle_window=2)  # fmt: skip
    config["model"]["trunk"]["init_args"].update(dropout=0.0, norm="layer")
    config["model"]["optimizer"] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_two_processes_equal_one_resume_is_exact_and_predict_names_lines(tmp_path, monkeypatch):
    datamodule = STREAMING
    table = write_example_table(tmp_path / "five_tasks.csv", n=200)  # 140 training rows
    config = _config(tmp_path, table, datamodule)
    common = ["--config", str(config), "--trainer.max_epochs", "2"]
    common += ["--trainer.deterministic", "true"]
    one = tmp_path / "one"
    run_in_process(one, monkeypatch, ["fit", *common, *MID_EPOCH, "--data.init_args.batch_size",
                                      "28"])  # fmt: skip
    two = tmp_path / "two"
    run_cli(two, ["fit", *common, *DDP, "--data.init_args.batch_size", "14"], timeout=400)
    one_run, two_run = (d / "lightning_logs" / "version_0" for d in (one, two))
    if datamodule == STREAMING:  # written once, by the first run; the DDP run read them
        assert len(list((tmp_path / "shards").glob("*/meta.json"))) == 1
    summary = json.loads((one_run / "summary.json").read_text())["val"]
    assert summary["global_step"] == 2 * 5  # 140 / 28 per epoch
    assert_runs_match(one_run, two_run)

    resumed = tmp_path / "resumed"
    mid = one_run / "checkpoints" / "mid-step=2.ckpt"
    run_in_process(resumed, monkeypatch, ["fit", *common, "--data.init_args.batch_size", "28",
                                          "--ckpt_path", str(mid)])  # fmt: skip
    w_one = _weights(one_run / "checkpoints" / "last.ckpt")
    w_resumed = _weights(resumed / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    for key, value in w_one.items():
        torch.testing.assert_close(w_resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)

    ckpt = one_run / "checkpoints" / "last.ckpt"
    run_in_process(one, monkeypatch, ["predict", "--config", str(config), "--ckpt_path",
                                      str(ckpt), "--trainer.callbacks+=mtl_lightning.data."
                                      "LabelledPredictionWriter"])  # fmt: skip
    written = sorted((one / "lightning_logs").glob("version_*/predictions.csv"))
    with written[-1].open() as f:
        predicted = list(csv.DictReader(f))
    assert len(predicted) == 200 and predicted[0]["path"] == "line 2"
    assert {r["y3"] for r in predicted} <= {"0", "1", "2", "3"}


STREAM_TABLE_FIT = "python -m mtl_lightning fit --config configs/tabular_five_tasks.yaml --data.class_path mtl_lightning.data.StreamingTabularDataModule"  # fmt: skip


@pytest.mark.reproduce
def test_the_streaming_table_command_as_written(tmp_path):
    """docs/streaming.md's tabular fit, from a directory holding the repository's configs and the
    table of docs/your-data.md: the shards are written beside it and every task is learned."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    write_example_table(tmp_path / "data" / "five_tasks.csv")
    run_cli(tmp_path, STREAM_TABLE_FIT.split()[3:], timeout=600)
    assert list((tmp_path / "data" / ".table_shards").glob("*/train/index.json"))
    summary = json.loads((tmp_path / "lightning_logs" / "version_0" / "summary.json").read_text())
    tasks = {t["task"]: t for t in summary["val"]["tasks"]}
    assert sorted(tasks) == ["y1", "y2", "y3", "y4", "y5"]
    assert all(t["verdict"] == "learned" for t in tasks.values()), tasks
