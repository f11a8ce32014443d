"""The opt-in LeakageProbe callback: probes at the end of fit, summary.json and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtl_lightning import GradientReversalSchedule, MultiTaskModule, MultiTaskSummary
from mtl_lightning.callbacks import LeakageProbe
from mtl_lightning.commands import main


def _fit(tmp_path: Path, data, callbacks) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="", version="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[GradientReversalSchedule(), MultiTaskSummary(print_table=False), *callbacks],
    )
    trainer.fit(MultiTaskModule(data.tasks), datamodule=data)
    return trainer


def test_probe_section_and_tensorboard_scalars(tmp_path, tiny_speech, capsys):
    probe = LeakageProbe(n_boot=50)
    trainer = _fit(tmp_path, tiny_speech, [probe])
    run = Path(trainer.log_dir)
    summary = json.loads((run / "summary.json").read_text())
    assert "val" in summary  # MultiTaskSummary's section is kept beside the probe's
    rows = summary["probe"]
    assert {(r["task"], r["probe"]) for r in rows} == {("speaker", "linear"), ("speaker", "mlp")}
    for r in rows:
        for key in ("balanced_acc", "ci_low", "ci_high"):
            assert 0.0 <= r[key] <= 1.0, r
        assert r["ci_low"] <= r["balanced_acc"] <= r["ci_high"]
        assert r["chance"] == pytest.approx(1 / 11)
    # the probe saw the whole validation split: 5 emotions x 11 speakers x 1 utterance
    assert len(probe.results) == 2
    assert "speaker  linear" in capsys.readouterr().out
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"probe/speaker/linear/balanced_acc", "probe/speaker/mlp/chance"} <= tags
    value = events.Scalars("probe/speaker/mlp/balanced_acc")[-1].value
    assert value == pytest.approx(next(r for r in rows if r["probe"] == "mlp")["balanced_acc"])


def test_named_task_and_no_logger(tmp_path, tiny_speech):
    """A main task can be probed (the trunk must carry it), and without a logger nothing is
    written but the results are kept on the callback."""
    probe = LeakageProbe(tasks=["emotion"], kinds=["linear"], n_boot=20, print_table=False)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[GradientReversalSchedule(), probe],
    )
    trainer.fit(MultiTaskModule(tiny_speech.tasks), datamodule=tiny_speech)
    [result] = probe.results
    assert result.task == "emotion" and result.probe == "linear"
    assert result.balanced_acc > 0.5  # emotion is learned, so a probe finds it (chance 0.2)
    assert not list(tmp_path.rglob("summary.json"))


def test_unknown_task_fails_before_training(tmp_path, tiny_speech):
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[LeakageProbe(tasks=["gender"])],
    )
    with pytest.raises(ValueError, match="cannot probe"):
        trainer.fit(MultiTaskModule(tiny_speech.tasks), datamodule=tiny_speech)
    assert trainer.global_step == 0


def test_the_default_configs_probe_is_set_from_the_command_line(in_tmp):
    """The default config ends its callbacks with a LeakageProbe: docs/speaker-adversarial.md's
    form (`--trainer.callbacks.every_n_epochs=5`) sets it."""
    cli = main(
        [
            "fit",
            "--data.init_args.per_pair",
            "2",
            "--data.init_args.per_pair_eval",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.max_epochs",
            "1",
            "--trainer.callbacks.n_boot=30",
        ]
    )
    probes = [c for c in cli.trainer.callbacks if isinstance(c, LeakageProbe)]
    assert len(probes) == 1 and probes[0].n_boot == 30
    summary = json.loads((Path(cli.trainer.log_dir) / "summary.json").read_text())
    assert {r["probe"] for r in summary["probe"]} == {"linear", "mlp"}
    assert torch.isfinite(torch.tensor([r["balanced_acc"] for r in summary["probe"]])).all()
