"""DDP with 2 processes as users run it: progress bar, checkpointing and the CLI's callbacks on.

Every run is a real ``python -m mtl_lightning`` command under a hard timeout, so a deadlock (the
ranks waiting in different collectives) fails the test. No test here turns a default off.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli_run import ROOT, run_cli

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
SMALL_SPEECH = [
    "--trainer.max_epochs", "2",
    "--data.init_args.per_pair", "2",
    "--data.init_args.per_pair_eval", "1",
    "--data.init_args.batch_size", "8",
]  # fmt: skip
SMALL_TABLE = [
    "--trainer.max_epochs", "2",
    "--data.init_args.n_train", "128",
    "--data.init_args.n_eval", "64",
    "--data.init_args.batch_size", "16",
]  # fmt: skip
SYNC_WARNING = "It is recommended to use `self.log("


def _config(name: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / name)]


def _check_run(cwd: Path, stderr: str, epochs: int) -> dict:
    """One run directory with a last.ckpt, a summary at the final epoch, and no sync warning."""
    runs = sorted((cwd / "lightning_logs").iterdir())
    assert [r.name for r in runs] == ["version_0"], runs
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["val"]["epoch"] == epochs - 1  # the index, as the bar and checkpoints count
    assert summary["val"]["epochs_completed"] == epochs
    assert SYNC_WARNING not in stderr
    return summary


DOCS_DDP_COMMAND = (
    "python -m mtl_lightning fit --trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp --trainer.max_epochs 5"
)  # fmt: skip


@pytest.mark.reproduce
def test_docs_ddp_command_verbatim(tmp_path):
    """docs/clusters.md's DDP command, exactly as written (5 epochs of the default)."""
    result = run_cli(tmp_path, DOCS_DDP_COMMAND.split()[3:], timeout=420)
    summary = _check_run(tmp_path, result.stderr, epochs=5)
    emotion = next(t for t in summary["val"]["tasks"] if t["task"] == "emotion")
    assert emotion["balanced_acc"] > 0.9
    assert "Per-task results" in result.stdout  # the table is printed once, by rank zero
    assert result.stdout.count("Per-task results") == 1


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([*_config("weighting_aggregation.yaml"), *SMALL_TABLE], id="upgrad"),
        pytest.param(
            [
                *_config("weighting_dynamic.yaml"),
                *SMALL_TABLE,
                "--model.weighting",
                "DynamicWeightAverage",
            ],
            id="dwa",  # computes the epoch's training losses in on_train_epoch_end
        ),
        pytest.param(
            [*SMALL_SPEECH, "--trainer.callbacks+=mtl_lightning.callbacks.LeakageProbe"],
            id="probe-callback",
        ),
    ],
)
def test_configs_under_two_processes_with_defaults(tmp_path, args):
    result = run_cli(tmp_path, ["fit", *DDP, *args])
    summary = _check_run(tmp_path, result.stderr, epochs=2)
    if "--trainer.callbacks+=mtl_lightning.callbacks.LeakageProbe" in args:
        assert summary["probe"]


def test_validate_test_predict_under_two_processes(tmp_path):
    """From a checkpoint trained in this process (fit under DDP is tested above; TaskAffinity
    under DDP with the defaults in tests/test_ddp.py)."""
    from mtl_lightning.commands import main

    fit = [*SMALL_SPEECH, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path)]
    main(["fit", *fit, "--trainer.logger.init_args.save_dir", str(tmp_path)])
    ckpt = str(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    for sub in ("validate", "predict"):  # `test` under DDP: tests/test_ddp.py
        result = run_cli(tmp_path, [sub, *DDP, *SMALL_SPEECH, "--ckpt_path", ckpt])
        assert SYNC_WARNING not in result.stderr, sub


def test_audio_config_under_two_processes(tmp_path):
    """configs/audio_speaker_adversarial.yaml on a generated corpus: extraction, the run files
    written by rank zero (after a broadcast every rank joins), training and the summary."""
    from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus

    spec = CorpusSpec(speakers=4, emotions=3, per_pair=3, min_seconds=0.3, max_seconds=0.5)
    manifest = write_corpus(tmp_path / "corpus", spec)
    args = [
        *_config("audio_speaker_adversarial.yaml"),
        "--data.init_args.manifest", str(manifest),
        "--data.init_args.n_mels", "16",
        "--trainer.max_epochs", "2",
        "--model.trunk.init_args.channels", "[4, 8, 8]",
        "--model.trunk.init_args.out_features", "16",
    ]  # fmt: skip
    result = run_cli(tmp_path, ["fit", *DDP, *args])
    _check_run(tmp_path, result.stderr, epochs=2)
    assert (tmp_path / "lightning_logs/version_0/label_vocab.json").is_file()
