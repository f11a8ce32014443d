"""`--ckpt_path last` resumes only a checkpoint of the same experiment."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from mtl_lightning.callbacks.config_fingerprint import (
    STATE_KEY,
    ConfigFingerprint,
    experiment_config,
    read_fingerprint,
)
from mtl_lightning.checkpoint_io import (
    CheckpointMismatchError,
    atomic_torch_save,
    find_last_checkpoint,
)
from mtl_lightning.cli import MultiTaskCLI
from mtl_lightning.commands import main

ROOT = Path(__file__).resolve().parents[1]
BASELINE = str(ROOT / "configs" / "speaker_baseline.yaml")
TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--data.init_args.per_pair", "2",
    "--data.init_args.per_pair_eval", "1",
]  # fmt: skip


def _ckpt(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


def test_last_refuses_another_experiment_then_resumes_its_own(in_tmp):
    """A user's scenario: a baseline (lambda 0) run, then `fit --ckpt_path last` with the
    default (DANN) config is an error naming both; the baseline's own resume still works."""
    baseline = main(["fit", "--config", BASELINE, *TINY])
    assert baseline.trainer.global_step == 2
    run = in_tmp / "lightning_logs" / "version_0"
    assert read_fingerprint(_ckpt(run))["experiment"]["reversal"]["max_lambda"] == 0.0

    with pytest.raises(CheckpointMismatchError) as error:
        main(["fit", *TINY, "--ckpt_path", "last"])
    message = str(error.value)
    assert f"newest found: {Path('lightning_logs/version_0/checkpoints/last.ckpt')}" in message
    assert "resources/default.yaml" in message  # the current run, by its config
    assert (
        "['model', 'reversal']" in message  # the control has no eraser either
        and "reversal.max_lambda: 0.0 in the checkpoint, 12.0 now" in message
    )
    assert f"--config {Path('lightning_logs/version_0/config.yaml')} --ckpt_path" in message
    assert (in_tmp / "lightning_logs" / "version_0" / "config.yaml").is_file()

    # the run's own config.yaml (model.tasks written out) is the same experiment, and trainer
    # settings are not part of it: a longer resume with `last` finds the baseline's checkpoint
    saved = "lightning_logs/version_0/config.yaml"
    resumed = main(["fit", "--config", saved, "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    assert resumed.trainer.ckpt_path == str(_ckpt(Path("lightning_logs/version_0")))
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 4
    assert read_fingerprint(_ckpt(in_tmp / "lightning_logs" / "version_1")) == read_fingerprint(
        _ckpt(run)
    )


def test_last_skips_a_newer_run_of_another_experiment(in_tmp):
    """Default run (version_0), then a newer baseline run (version_1): the default's resume takes
    version_0, not the newest file; the new checkpoints carry the same fingerprint."""
    main(["fit", *TINY])
    main(["fit", "--config", BASELINE, *TINY])
    logs = in_tmp / "lightning_logs"
    assert (
        _ckpt(logs / "version_1").stat().st_mtime_ns >= _ckpt(logs / "version_0").stat().st_mtime_ns
    )
    # a leftover of a killed write (a dead writer, before this process): removed at fit start
    debris = logs / "version_0" / "checkpoints" / ".last.ckpt.tmp-999999999"
    debris.write_bytes(b"torn")
    os.utime(debris, (0, 0))

    resumed = main(["fit", *TINY, "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    assert resumed.trainer.ckpt_path == str(_ckpt(Path("lightning_logs/version_0")))
    assert resumed.trainer.global_step == 4
    assert not debris.exists()
    first, second = (
        read_fingerprint(_ckpt(logs / "version_0")),
        read_fingerprint(_ckpt(logs / "version_2")),
    )
    assert first == second


class _Parsed(Exception):
    """Raised instead of running: the CLI has parsed and built its trainer."""


def test_fingerprint_ignores_trainer_settings_and_subcommand(in_tmp, monkeypatch):
    """What `--trainer.max_epochs 30 --trainer.devices 2`, `--ckpt_path` or `validate` change is
    not the experiment; `--reversal.max_lambda` or a data setting is."""

    def stop(cli: MultiTaskCLI) -> None:
        stamps = [c for c in cli.trainer.callbacks if isinstance(c, ConfigFingerprint)]
        raise _Parsed(stamps[0].fingerprint)  # exactly one, on the trainer

    for hook in ("before_fit", "before_validate"):
        monkeypatch.setattr(MultiTaskCLI, hook, stop)

    def stamp(*args: str) -> str:
        with pytest.raises(_Parsed) as parsed:
            main([*args, "--trainer.enable_progress_bar", "false"])
        return str(parsed.value)

    base = stamp("fit")
    assert base == stamp("fit", "--trainer.max_epochs", "30", "--trainer.devices", "2",
                         "--trainer.accelerator", "cpu", "--seed_everything", "3")  # fmt: skip
    assert base == stamp("validate", "--ckpt_path", "last", "--verbose", "false")
    assert base != stamp("fit", "--reversal.max_lambda", "0.5")
    assert base != stamp("fit", "--data.init_args.per_pair", "3")


def test_experiment_config_drops_run_settings():
    config = {"trainer": {"devices": 2}, "ckpt_path": "last", "config": ["a.yaml"],
              "summary": {"print_table": False}, "seed_everything": 1,
              "model": {"head_hidden": 8, "__path__": "m.yaml"}, "reversal": {"max_lambda": 0.0}}  # fmt: skip
    assert experiment_config(config) == {
        "model": {"head_hidden": 8},
        "reversal": {"max_lambda": 0.0},
    }


class _Trainer:
    """What find_last_checkpoint reads of a trainer: no logger, checkpoints under the root."""

    checkpoint_callbacks: list = []
    logger = None

    def __init__(self, root: Path) -> None:
        self.default_root_dir = str(root)


def _write(path: Path, stamp: ConfigFingerprint | None, mtime: int) -> Path:
    callbacks = {STATE_KEY: stamp.state_dict()} if stamp else {}
    atomic_torch_save({"state_dict": {"w": torch.ones(2)}, "callbacks": callbacks}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_unstamped_checkpoints_are_used_only_without_stamped_ones(tmp_path):
    ours, other = ConfigFingerprint({"reversal": {"max_lambda": 1.0}}), ConfigFingerprint({})
    d = tmp_path / "checkpoints"
    old = _write(d / "last.ckpt", None, 100)
    trainer = _Trainer(tmp_path)
    with pytest.warns(UserWarning, match="no configuration fingerprint"):
        assert find_last_checkpoint(trainer, ours) == str(old)
    _write(d / "last-v1.ckpt", other, 200)  # another experiment's, newer
    with pytest.raises(CheckpointMismatchError, match=r"last-v1.ckpt.*\n.*\n.*\['reversal'\]"):
        find_last_checkpoint(trainer, ours)
    mine = _write(d / "last-v2.ckpt", ours, 50)  # ours, oldest: still chosen
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_last_checkpoint(trainer, ours) == str(mine)
    assert find_last_checkpoint(trainer) == str(d / "last-v1.ckpt")  # without a stamp: newest


def test_equal_mtimes_choose_the_same_file_every_time(tmp_path):
    """Every DDP rank parses and chooses on its own: ties are broken by name."""
    stamp = ConfigFingerprint({"data": {"seed": 0}})
    for name in ("last.ckpt", "last-v1.ckpt", "last-v2.ckpt"):
        _write(tmp_path / "checkpoints" / name, stamp, 100)
    chosen = {find_last_checkpoint(_Trainer(tmp_path), stamp) for _ in range(3)}
    assert chosen == {str(tmp_path / "checkpoints" / "last.ckpt")}


def test_read_fingerprint_imports_nothing_and_tolerates_junk(tmp_path):
    from collections import OrderedDict

    stamp = ConfigFingerprint({"model": {"head_hidden": 8}})
    path = tmp_path / "a.ckpt"
    payload = {"state_dict": OrderedDict(w=torch.ones(3)), "hparams": Path("x"), "callbacks": {}}
    payload["callbacks"][STATE_KEY] = stamp.state_dict()
    torch.save(payload, path)
    assert read_fingerprint(path) == {
        "fingerprint": stamp.fingerprint,
        "experiment": stamp.experiment,
    }
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 not a zip")
    assert read_fingerprint(tmp_path / "junk.ckpt") is None
    torch.save({"state_dict": {}}, tmp_path / "old.ckpt")
    assert read_fingerprint(tmp_path / "old.ckpt") is None
