"""configs/seed_quality_images.yaml as users run it: fit, test and predict from its checkpoint,
two processes against one, and a resumed run against an uninterrupted one (with the
config's augmentation on: it is seeded per sample and epoch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from _cli_run import ROOT, run_cli, run_in_process
from _ddp_helpers import assert_runs_match

pytest.importorskip("torchvision")

from mtl_lightning.images.synthetic_corpus import ImageCorpusSpec, write_image_corpus  # noqa: E402

CONFIG = ROOT / "configs" / "seed_quality_images.yaml"
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def _main(cwd: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    run_in_process(cwd, monkeypatch, list(args))


def _config(tmp_path: Path, manifest: Path, **changes: object) -> Path:
    """The config with a small corpus and image size; ``changes`` replace ``model`` keys."""
    config = yaml.safe_load(CONFIG.read_text())
    config["data"]["init_args"].update(manifest=str(manifest), image_size=32, batch_size=16)
    config["model"].update(changes)
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _summary(run: Path, stage: str = "val") -> dict[str, dict]:
    summary = json.loads((run / "summary.json").read_text())[stage]
    return {t["task"]: t for t in summary["tasks"]}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_config_fit_test_and_predict_from_its_checkpoint(tmp_path, monkeypatch):
    manifest = write_image_corpus(tmp_path / "seed_images", ImageCorpusSpec(n_images=64, size=32))
    config = _config(tmp_path, manifest)
    _main(tmp_path, monkeypatch, "fit", "--config", str(config), "--trainer.max_epochs", "1")
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert json.loads((run / "label_vocab.json").read_text())["quality"] == [
        "good",
        "raw",
        "rotten",
    ]
    stats = json.loads((run / "image_stats.json").read_text())
    assert stats["images"] == {"image_size": 32, "channels": 3} and len(stats["mean"]) == 3
    val = _summary(run)
    assert set(val) == {"seed", "quality"}
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    graded = sum(r["seed"] == "yes" and r["quality"] != "" for r in rows)
    # quality is scored on graded seed images only: n counts them, not the `n/a` rows
    assert val["quality"]["n"] < val["seed"]["n"]
    assert val["quality"]["chance"] == pytest.approx(1 / 3)
    _main(tmp_path, monkeypatch, "test", "--config", str(config), "--ckpt_path", str(ckpt))
    test = _summary(tmp_path / "lightning_logs" / "version_1", "test")
    assert test["seed"]["n"] + val["seed"]["n"] < len(rows)  # val and test: disjoint splits
    _main(tmp_path, monkeypatch, "predict", "--config", str(config), "--ckpt_path", str(ckpt),
          "--data.init_args.predict_split", "all")  # fmt: skip
    written = sorted((tmp_path / "lightning_logs").glob("version_*/predictions.csv"))
    with written[-1].open() as f:
        predicted = list(csv.DictReader(f))
    assert len(predicted) == len(rows) and graded < len(rows)
    assert {r["seed"] for r in predicted} <= {"no", "yes"}
    assert {r["quality"] for r in predicted} <= {"good", "raw", "rotten"}
    assert sorted(r["path"] for r in predicted) == sorted(r["path"] for r in rows)


# BatchNorm's batch statistics are per process and dropout's masks differ: GroupNorm, no
# dropout and SGD make 1 and 2 processes comparable (as in tests/test_ddp.py)
EQUIVALENT_TRUNK = {
    "class_path": "mtl_lightning.nn.CNNTrunk",
    "init_args": {"in_channels": 3, "channels": [8, 8, 16], "out_features": 16,
                  "freq_bins": 2, "dropout": 0.0, "norm": "group"},
}  # fmt: skip
SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}
MID_EPOCH = [
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.every_n_train_steps=3",
    "--trainer.callbacks.save_top_k=-1",
    "--trainer.callbacks.filename=mid-{step}",
]


def test_two_processes_equal_one_and_a_resumed_run_equals_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    # 92 images: 64 for training, an even number, so 2 shards need no padding
    manifest = write_image_corpus(tmp_path / "seed_images", ImageCorpusSpec(n_images=92, size=32))
    config = _config(tmp_path, manifest, trunk=EQUIVALENT_TRUNK, optimizer=SGD, lr_scheduler=None)
    common = [
        "--config",
        str(config),
        "--trainer.max_epochs",
        "2",
        "--trainer.deterministic",
        "true",
    ]
    two = tmp_path / "two"
    run_cli(two, ["fit", *common, *DDP, "--data.init_args.batch_size", "8"], timeout=400)
    one = tmp_path / "one"
    _main(one, monkeypatch, "fit", *common, *MID_EPOCH)  # batch 16 = 2 x 8
    two_run, one_run = (d / "lightning_logs" / "version_0" for d in (two, one))
    summary = json.loads((one_run / "summary.json").read_text())["val"]
    assert summary["global_step"] == 8  # 64 / 16 per epoch: the even split held
    assert_runs_match(one_run, two_run)
    w_one = _weights(one_run / "checkpoints" / "last.ckpt")

    # killed after step 3 (mid-epoch 0) and resumed: the same augmented batches, the same weights
    resumed = tmp_path / "resumed"
    mid = one_run / "checkpoints" / "mid-step=3.ckpt"
    _main(resumed, monkeypatch, "fit", *common, "--ckpt_path", str(mid))
    w_resumed = _weights(resumed / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    for key, value in w_one.items():
        torch.testing.assert_close(w_resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)


IMAGE_CORPUS = "python -m mtl_lightning.images.synthetic_corpus seed_images --n-images 1200"
IMAGE_FIT = "python -m mtl_lightning fit --config configs/seed_quality_images.yaml"
IMAGE_TEST = "python -m mtl_lightning test --config configs/seed_quality_images.yaml --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt"  # fmt: skip


@pytest.mark.reproduce
def test_the_image_commands_as_written(tmp_path):
    """docs/images.md's corpus, fit and test, from a directory holding the repository's configs;
    the measured table's claims (docs: val 0.989 / 0.987, test 0.967 / 0.986 balanced)."""
    import subprocess
    import sys

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    subprocess.run(
        [sys.executable, *IMAGE_CORPUS.split()[1:]], cwd=tmp_path, check=True, capture_output=True
    )
    assert len((tmp_path / "seed_images" / "manifest.csv").read_text().splitlines()) == 1 + 1200
    run_cli(tmp_path, IMAGE_FIT.split()[3:], timeout=1500)
    run_cli(tmp_path, IMAGE_TEST.split()[3:], timeout=600)
    run = tmp_path / "lightning_logs" / "version_0"
    for stage, n_quality in (("val", 78), ("test", 80)):
        tasks = _summary(run, stage)
        assert tasks["seed"]["n"] == 180 and tasks["quality"]["n"] == n_quality, stage
        assert tasks["seed"]["balanced_acc"] > 0.9 and tasks["quality"]["balanced_acc"] > 0.9
        assert tasks["seed"]["verdict"] == tasks["quality"]["verdict"] == "learned"
