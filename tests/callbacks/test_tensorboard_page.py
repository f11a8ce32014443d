"""The TensorBoard pages: Custom Scalars sections, HParams of the run's choices, the heatmap."""

import re
import sys
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from mtl_lightning import MultiTaskModule
from mtl_lightning.affinity.figure import affinity_figure, figure_to_image
from mtl_lightning.callbacks import MultiTaskSummary, TaskAffinity
from mtl_lightning.callbacks.run_hparams import run_hparams
from mtl_lightning.callbacks.tensorboard_layout import tensorboard_layout
from mtl_lightning.data import SyntheticTabularDataModule
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.tasks import TaskSpec

MAIN = [TaskSpec("a", 2), TaskSpec("b", 3)]
AFFINITY = "affinity: effect of source on target (self-affinity left out)"


def _matches(layout, tag):
    """Chart titles whose regexes match ``tag`` (TensorBoard: ``re.match``)."""
    return [
        f"{section}/{title}"
        for section, charts in layout.items()
        for title, (_, regexes) in charts.items()
        if any(re.match(r, tag) for r in regexes)
    ]


def test_layout_has_a_section_only_for_what_ran_and_was_logged():
    tags = ["affinity/a_to_a", "affinity/a_to_b", "affinity/b_to_a", "train/weight/a"]
    tags += ["train/grad_cos/a__b", "val/a/acc"]
    layout = tensorboard_layout(MAIN, stages=("train", "val"), tags=tags)
    assert list(layout) == [
        "val: accuracy vs chance",
        "train: accuracy vs chance",
        "losses",
        "task weights (train/weight/*)",
        "gradient cosines (train/grad_cos/*)",
        AFFINITY,
    ]  # no adversary section (nor lambda chart) without an adversarial task, no test section
    assert list(layout[AFFINITY]) == ["a → b", "b → a"]  # self-affinity not charted
    assert _matches(layout, "affinity/a_to_a") == []
    assert _matches(layout, "train/weight/a") == ["task weights (train/weight/*)/weight of a"]
    assert not any(s.startswith("test") for s in layout)
    tested = tensorboard_layout(MAIN, stages=("test",))
    assert list(tested) == ["test: accuracy vs chance", "losses"]
    assert tested["losses"] == layout["losses"]  # so TensorBoard merges a test run's charts
    adversarial = tensorboard_layout([*MAIN, TaskSpec("s", 4, role="adversarial")])
    charts = adversarial["adversaries and leakage"]
    assert _matches({"x": charts}, "train/grl_lambda")
    assert any("vs chance (val/s/chance)" in title for title in charts)


def test_hparams_tell_a_control_run_from_a_dann_run():
    def config(max_lambda):
        return {
            "seed_everything": 0,
            "trainer": {"max_epochs": 4, "callbacks": [{"class_path": "x.LeakageProbe"}]},
            "model": {
                "_instantiator": "lightning.pytorch.cli.instantiate_module",
                "tasks": [],
                "grl_lambda": 1.0,
                "weighting": {"class_path": "mtl_lightning.weighting.FAMO", "init_args": {}},
                "optimizer": {
                    "class_path": "torch.optim.AdamW",
                    "init_args": {"lr": 0.001, "amsgrad": False},
                },
                "adversary_config": {"objective": None, "attackers": [0, 128], "erase": True},
            },
            "data": {"class_path": "m.SyntheticSpeechDataModule", "init_args": {"noise": 1.0}},
            "reversal": {"schedule": "dann", "max_lambda": max_lambda},
        }

    tasks = [TaskSpec("speaker", 11, role="adversarial", adversary="hsic")]
    control, dann = (run_hparams(config(m), tasks, {"speaker": "hsic"}) for m in (0.0, 12.0))
    assert {k for k in dann if control[k] != dann[k]} == {"reversal/max_lambda"}
    assert not any(k.startswith("_") or "_instantiator" in k for k in dann)
    assert "model/grl_lambda" not in dann  # the schedule sets lambda
    assert dann["model/weighting"] == "FAMO" and dann["model/optimizer/lr"] == 0.001
    assert "model/optimizer/amsgrad" not in dann  # optimizer flags are noise
    assert dann["model/adversary_config/objective"] == "hsic"  # null: what the task resolved to
    assert dann["model/adversary_config/erase"] == "true" and dann["data/noise"] == 1.0
    assert dann["trainer/max_epochs"] == 4 and dann["data"] == "SyntheticSpeechDataModule"
    assert dann["task/speaker"].endswith("hsic")
    assert all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in dann.values())


def _colour(image, ax, row, col):
    """The pixel colour near the top-left corner of cell (row, col), clear of its text."""
    x, y = ax.transData.transform((col - 0.35, row - 0.35))
    height = image.shape[1]
    return image[:, int(height - y), int(x)].numpy()


def test_heatmap_has_a_fixed_scale_and_marks_unmeasured_pairs():
    pytest.importorskip("matplotlib")
    first = [[0.9, 0.01, -0.02], [0.0, 0.5, None], [0.005, 0.0, 0.7]]
    later = [[0.9, 0.01, -0.002], [0.0, 0.5, 0.001], [0.02, 0.0, 0.7]]  # larger elsewhere
    images = []
    for matrix in (first, later):
        fig = affinity_figure(matrix, ["t1", "t2", "t3"], scale=0.02)
        images.append((figure_to_image(fig), fig.axes[0]))
    (one, ax1), (two, ax2) = images
    np.testing.assert_allclose(_colour(one, ax1, 0, 1), _colour(two, ax2, 0, 1), atol=0.02)
    red, blue = _colour(one, ax1, 0, 1), _colour(one, ax1, 0, 2)
    assert red[0] > red[2] + 0.2 and blue[2] > blue[0] + 0.2  # helps red, hurts blue
    grey = _colour(one, ax1, 1, 2)  # never measured: grey (hatched), not drawn as 0 (white)
    assert np.ptp(grey) < 0.05 and grey.mean() < 0.9
    labels = [t.get_text() for t in ax1.get_xticklabels()]
    texts = [t.get_text() for t in ax1.texts]
    assert labels == ["t1", "t2", "t3"] and "n/a" in texts and "0.010" in texts
    with pytest.raises(ValueError, match="for 2 tasks"):
        affinity_figure(first, ["t1", "t2"], scale=0.02)


def test_fit_then_test_rewrites_the_layout_and_logs_hparams_and_heatmap(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    pl.seed_everything(0, verbose=False)
    dm = SyntheticTabularDataModule(n_train=32, n_eval=16, batch_size=16)
    model = MultiTaskModule(dm.tasks, trunk=DenseTrunk(120, dropout=0.0), head_hidden=4)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        limit_val_batches=1,
        limit_test_batches=1,
        num_sanity_val_steps=0,
        callbacks=[MultiTaskSummary(print_table=False), TaskAffinity(every_n_steps=2)],
    )
    trainer.fit(model, datamodule=dm)
    run = str(tmp_path / "tb" / "version_0")

    def events():
        acc = EventAccumulator(run, size_guidance={"tensors": 0, "images": 0})
        acc.Reload()
        return acc

    def sections(acc):
        layout = layout_pb2.Layout()
        layout.ParseFromString(
            acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0]
        )
        return [c.title for c in layout.category]

    fitted = events()
    assert "test: accuracy vs chance" not in sections(fitted) and AFFINITY in sections(fitted)
    assert [i.step for i in fitted.Images("affinity/heatmap")] == [trainer.global_step]
    hparams = fitted.summary_metadata
    assert "_hparams_/session_start_info" in hparams and "_hparams_/experiment" not in hparams
    start = hparams["_hparams_/session_start_info"].plugin_data.content
    assert b"trainer/max_epochs" in start and b"_instantiator" not in start
    trainer.test(model, datamodule=dm)
    assert sections(events())[:3] == [f"{s}: accuracy vs chance" for s in ("val", "train", "test")]


def test_without_matplotlib_the_old_grid_is_logged_and_said_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # `import` raises ImportError
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = SimpleNamespace(loggers=[logger])
    callback = TaskAffinity(image_scale=0.5)
    record = {"epoch": 0, "step": 7, "tasks": ["a", "b"], "affinity": [[1.0, None], [0.5, 1.0]]}
    added = []
    monkeypatch.setattr(logger.experiment, "add_image", lambda *a: added.append(a))
    with pytest.warns(UserWarning, match="matplotlib is not installed") as caught:
        callback._log_image(trainer, record)
        callback._log_image(trainer, {**record, "step": 9})
    assert len([w for w in caught if "matplotlib" in str(w.message)]) == 1
    assert [(tag, tuple(image.shape), step) for tag, image, step in added] == [
        ("affinity/heatmap", (3, 51, 51), 7),
        ("affinity/heatmap", (3, 51, 51), 9),
    ]
