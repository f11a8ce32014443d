"""configs/tabular_five_tasks.yaml through the CLI: one tiny epoch, then its checkpoint restores
the classes and statistics for other data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mtl_lightning.commands import main
from mtl_lightning.data import TabularDataModule, write_example_table

CONFIG = str(Path(__file__).parents[2] / "configs" / "tabular_five_tasks.yaml")


def test_five_task_config_fits_and_its_checkpoint_restores_the_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config reads data/five_tasks.csv, as a user would
    write_example_table("data/five_tasks.csv", n=120)
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--summary.print_table",
            "false",
            "--data.init_args.batch_size",
            "32",
        ]
    )
    assert [(t.name, t.size) for t in cli.model.tasks] == [
        ("y1", 3), ("y2", 2), ("y3", 4), ("y4", 2), ("y5", 3)
    ]  # fmt: skip
    run = Path(cli.trainer.log_dir)
    vocab = json.loads((run / "label_vocab.json").read_text())
    assert vocab["y3"] == ["0", "1", "2", "3"]
    assert len(json.loads((run / "feature_stats.json").read_text())["mean"]) == 20
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["TabularDataModule"]
    assert state["vocab"] == vocab and state["features"] == [f"x{j}" for j in range(20)]
    # new data without class 3 of y3 (and shifted features): the checkpoint's classes and
    # statistics win, so the heads keep their sizes and the features their scaling
    lines = Path("data/five_tasks.csv").read_text().splitlines()
    kept = [line for line in lines[1:] if line.split(",")[22] != "3"]
    shifted = [
        ",".join(f"{float(c) + 5:.6g}" for c in r.split(",")[:20])
        + ","
        + ",".join(r.split(",")[20:])
        for r in kept
    ]
    Path("data/new.csv").write_text("\n".join([lines[0], *shifted]) + "\n")
    tasks = [{"name": f"y{k}"} for k in range(1, 6)]
    fresh = TabularDataModule(tasks, path="data/new.csv")
    restored = TabularDataModule(tasks, path="data/new.csv", restore_from=str(last))
    assert fresh.tasks[2].size == 3 and restored.tasks[2].size == 4
    restored.setup("validate")
    torch.testing.assert_close(torch.from_numpy(restored.stats.mean), state["mean"])
    assert restored.val_set.features.mean() > 2  # scaled with the training run's statistics
    # predict on features only (no label columns): every row, in file order, with its line
    unlabelled = [",".join(r.split(",")[:20]) for r in shifted[:7]]
    Path("data/x_only.csv").write_text("\n".join([",".join(lines[0].split(",")[:20]), *unlabelled]))
    new = TabularDataModule(
        tasks, path="data/new.csv", predict_path="data/x_only.csv", restore_from=str(last)
    )
    predictions = cli.trainer.predict(cli.model, datamodule=new)
    assert sum(len(p["y3"]["pred"]) for p in predictions) == 7
    assert new.row_path(6) == "line 8" and new.predict_set[6]["index"] == 6
    torch.testing.assert_close(
        new.predict_set.features,
        restored.val_set.features.new_tensor(
            (np.loadtxt("data/x_only.csv", delimiter=",", skiprows=1) - state["mean"].numpy())
            / state["std"].numpy()
        ),
    )
