"""The CLI entry: every config runs, the default run writes its run directory, extra commands."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mtl_lightning import MultiTaskModule
from mtl_lightning.cli import DEFAULT_CONFIG
from mtl_lightning.commands import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TINY = [
    "--data.init_args.per_pair",
    "2",
    "--data.init_args.per_pair_eval",
    "1",
    "--trainer.enable_progress_bar",
    "false",
]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_fast_dev_run_for_every_config(config, in_tmp):
    cli = main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run",
            "true",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1


def test_default_config_runs_unchanged_under_bf16_mixed(in_tmp):
    """`--trainer.precision bf16-mixed` (docs/performance.md) with the default config, here on
    CPU: the precision path is the same code; a whole epoch, validation included."""
    cli = main(["fit", *TINY, "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1"])
    assert cli.trainer.state.finished and cli.trainer.precision == "bf16-mixed"
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["val/loss"]) and 0.0 <= float(metrics["val/emotion/acc"]) <= 1
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


def test_default_is_the_speaker_adversarial_config():
    default = yaml.safe_load(Path(DEFAULT_CONFIG).read_text())
    explicit = yaml.safe_load((ROOT / "configs" / "speaker_adversarial.yaml").read_text())
    baseline = yaml.safe_load((ROOT / "configs" / "speaker_baseline.yaml").read_text())
    assert default == explicit
    assert default["reversal"] == {"schedule": "dann", "max_lambda": 12.0, "gamma": 10.0}
    assert baseline["reversal"]["max_lambda"] == 0.0
    assert baseline["model"]["adversary_config"]["erase"] is False
    baseline["reversal"] = default["reversal"]
    baseline["model"]["adversary_config"]["erase"] = True
    assert baseline == default  # identical but for lambda and the eraser


def test_default_fit_writes_run_directory(in_tmp, capsys):
    cli = main(["fit", *TINY, "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"])
    run = in_tmp / "lightning_logs" / "version_0"
    assert Path(cli.trainer.log_dir) == Path("lightning_logs/version_0")
    assert (run / "config.yaml").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert list(run.glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())["val"]
    assert [t["task"] for t in summary["tasks"]] == ["emotion", "speaker"]
    speaker = summary["tasks"][1]
    assert speaker["role"] == "adversarial" and speaker["chance"] == pytest.approx(1 / 11)
    assert speaker["verdict"] in {"at chance", "above chance (leaks)", "below chance (leaks)"}
    assert 0.0 <= summary["tasks"][0]["balanced_acc"] <= 1.0
    assert summary["grl_lambda"] > 0
    out = capsys.readouterr().out
    header = "task     role         val acc  val balanced acc  chance   n  linear probe  mlp probe  verdict"
    assert header in out  # the default's LeakageProbe puts its figures in the table
    assert "Data (SyntheticSpeechDataModule): train 110, val 55, test 55 samples" in out
    assert "speaker  classification       11   0.091  110/55/55" in out  # printed once, at start
    assert out.count("Data (SyntheticSpeechDataModule)") == 1
    # the bar: each task's validation headline (the speaker's worst-case attacker) and lambda
    shown = set(cli.trainer.progress_bar_metrics)
    assert {"val/emotion/balanced_acc", "val/speaker/balanced_acc", "train/grl_lambda"} <= shown
    assert "val/emotion/acc" not in shown and "train/emotion/balanced_acc" not in shown
    assert "speaker  adversarial" in out

    tags, plugins = _event_contents(run)
    for task in ("emotion", "speaker"):
        for key in ("loss", "acc", "balanced_acc", "f1", "chance", "majority"):
            assert f"val/{task}/{key}" in tags
            assert f"train/{task}/{key}" in tags
    assert {"train/grl_lambda", "val/loss"} <= tags
    assert {"custom_scalars", "hparams"} <= plugins

    # the checkpoint alone rebuilds the model (trunk and tasks from the saved config)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert torch.load(ckpt, weights_only=True)["global_step"] == cli.trainer.global_step
    restored = MultiTaskModule.load_from_checkpoint(ckpt).eval()
    model = cli.model.eval()
    x = torch.randn(3, 1, 40, 64)
    for task, out in model(x).items():
        torch.testing.assert_close(restored(x)[task], out)
    assert restored.tasks == model.tasks

    # the same run can be validated, tested and predicted from its checkpoint
    for command in ("validate", "test", "predict"):
        main([command, *TINY, "--ckpt_path", ckpt])
    test = json.loads((in_tmp / "lightning_logs" / "version_2" / "summary.json").read_text())
    assert test["test"]["tasks"][0]["task"] == "emotion"


def _event_contents(run: Path) -> tuple[set[str], set[str]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags, plugins = set(), set()
    for path in run.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                tags.add(value.tag)
                if value.metadata.plugin_data.plugin_name:
                    plugins.add(value.metadata.plugin_data.plugin_name)
    return tags, plugins


HELP = "python -m mtl_lightning --help"  # docs/speaker-adversarial.md, as written
PRINT_CONFIG = "python -m mtl_lightning fit --print_config"  # docs/speaker-adversarial.md


def test_help_lists_subcommands_and_print_config_works():
    helped = subprocess.run(
        [sys.executable, *HELP.split()[1:]],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    out = helped.stdout
    for command in ("fit", "validate", "test", "predict", "probe"):
        assert command in out
    assert "usage: python -m mtl_lightning " in out  # not __main__.py
    printing = subprocess.run(
        [sys.executable, *PRINT_CONFIG.split()[1:]],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    printed = printing.stdout
    for noise in ("args parameter is intended", "Tip:", "LeafSpec"):  # nothing of ours to read
        assert noise not in helped.stderr + printing.stderr, noise
    config = yaml.safe_load(printed)
    assert config["data"]["class_path"] == "mtl_lightning.data.SyntheticSpeechDataModule"
    assert config["reversal"]["schedule"] == "dann"
    assert "tasks" not in config["model"]  # linked from the datamodule, declared once


def test_config_typo_is_a_clear_error(in_tmp, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--data.class_path", "mtl_lightning.data.SynteticSpeechDataModule"])
    assert "SynteticSpeechDataModule" in capsys.readouterr().err


def test_class_path_typo_in_a_config_file_is_a_clear_error(in_tmp, capsys):
    """The typo lives only in the YAML file (the command line names just the file), and the
    error names both the key and the bad class path; nothing is trained."""
    config = yaml.safe_load((ROOT / "configs" / "speaker_baseline.yaml").read_text())
    assert config["model"]["trunk"]["class_path"] == "mtl_lightning.nn.CNNTrunk"
    config["model"]["trunk"]["class_path"] = "mtl_lightning.nn.CNNTrunkk"
    (in_tmp / "run.yaml").write_text(yaml.safe_dump(config))
    argv = ["fit", "--config", "run.yaml"]
    assert not any("Trunkk" in a for a in argv)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert 'Parser key "model.trunk"' in err, err
    assert "Problem with given class_path 'mtl_lightning.nn.CNNTrunkk'" in err, err
    assert "has no attribute 'CNNTrunkk'" in err, err
    assert not (in_tmp / "lightning_logs").exists()


def test_fit_help_names_the_trunk_contract_not_every_torch_module(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # the help is wrapped to the terminal's width
    assert "any nn.Module with an integer `out_features`" in flat
    assert "torch.nn.Bilinear" not in flat and "torch.ao.nn" not in flat
    assert len(out.splitlines()) < 800  # was 1,170+ with every nn.Module subclass listed
