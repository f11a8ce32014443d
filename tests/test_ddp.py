"""DDP on CPU with 2 processes (gloo): the launch works and evaluation equals one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TINY = [
    "--data.init_args.per_pair",
    "2",
    "--data.init_args.per_pair_eval",
    "1",
    "--data.init_args.n_mels",
    "16",
    "--data.init_args.frames",
    "16",
    "--data.init_args.batch_size",
    "8",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.accelerator",
    "cpu",
    "--summary.print_table",
    "false",
]


def _cli(cwd: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mtl_lightning", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _test_metrics(run: Path) -> dict[str, dict[str, float]]:
    summary = json.loads((run / "summary.json").read_text())["test"]
    return {t["task"]: t for t in summary["tasks"]}


# The default scenario with three changes that make 1 and 2 processes comparable: GroupNorm
# (BatchNorm's batch statistics are per process; --trainer.sync_batchnorm fixes that, but only on
# GPUs), no dropout (its masks differ) and SGD (Adam's first steps are lr * sign(g), which turns
# float-rounding differences in near-zero gradients into lr-sized ones).
EQUIVALENT = [
    "--model.trunk.init_args.norm",
    "group",
    "--model.trunk.init_args.dropout",
    "0.0",
    "--model.optimizer",
    "torch.optim.SGD",
    "--model.optimizer.lr",
    "0.05",
    "--trainer.deterministic",
    "true",
]


def test_two_process_fit_and_test_equal_single_process(tmp_path):
    # train 1 epoch with 2 processes (DDP, gloo on CPU), batch 8 per process ...
    _cli(
        tmp_path,
        "fit",
        *TINY,
        *EQUIVALENT,
        "--trainer.max_epochs",
        "1",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    )
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    assert (tmp_path / "lightning_logs" / "version_0" / "summary.json").exists()
    assert not (tmp_path / "lightning_logs" / "version_1").exists()  # one run dir, not one per rank

    # ... and with 1 process, batch 16: rank r reads every 2nd index of the same seeded
    # permutation, so each global batch is the same 16 samples (110 = 2 x 55: no padding)
    single_fit = tmp_path / "single"
    single_fit.mkdir()
    at = TINY.index("--data.init_args.batch_size") + 1
    tiny16 = [*TINY[:at], "16", *TINY[at + 1 :]]
    _cli(single_fit, "fit", *tiny16, *EQUIVALENT, "--trainer.max_epochs", "1")
    one_run = single_fit / "lightning_logs" / "version_0"
    one, two = (
        json.loads((run / "summary.json").read_text())["val"]
        for run in (one_run, tmp_path / "lightning_logs" / "version_0")
    )
    assert one["global_step"] == two["global_step"] == 7
    assert one["grl_lambda"] == two["grl_lambda"]  # the same lambda on every rank and step
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-4)
    for a, b in zip(one["tasks"], two["tasks"], strict=True):
        for key in ("loss", "acc", "balanced_acc", "f1", "majority"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["task"], key)
    w_one = torch.load(one_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    w_two = torch.load(ckpt, weights_only=True)["state_dict"]
    for key, value in w_one.items():  # metric states are per rank in a checkpoint: skip them
        if key.startswith(("stage_metrics.", "stage_losses.", "train_class_counts.")):
            continue
        torch.testing.assert_close(w_two[key], value, rtol=1e-4, atol=1e-5, msg=key)

    # evaluate the same checkpoint on 55 test samples (odd: a padding sampler would count one twice)
    _cli(tmp_path, "test", *TINY, "--ckpt_path", str(ckpt), "--trainer.devices", "1")
    _cli(
        tmp_path,
        "test",
        *TINY,
        "--ckpt_path",
        str(ckpt),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    )
    single = _test_metrics(tmp_path / "lightning_logs" / "version_1")
    double = _test_metrics(tmp_path / "lightning_logs" / "version_2")
    assert set(single) == {"emotion", "speaker"}
    for task, row in single.items():
        for key in ("loss", "acc", "balanced_acc", "f1", "majority"):
            assert double[task][key] == pytest.approx(row[key], abs=1e-6), (task, key)


def test_affinity_callback_under_two_processes(tmp_path):
    """TaskAffinity averages across ranks and writes its file once (rank zero) without a hang."""
    config = Path(__file__).resolve().parents[1] / "configs" / "five_task_affinity.yaml"
    _cli(
        tmp_path,
        "fit",
        "--config",
        str(config),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "10",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.enable_progress_bar",
        "false",
    )
    record = json.loads((tmp_path / "lightning_logs" / "version_0" / "affinity.json").read_text())
    assert len(record["epochs"]) == 1
    assert len(record["epochs"][0]["affinity"]) == len(record["tasks"]) == 5
