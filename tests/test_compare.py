"""`python -m mtl_lightning compare` end to end on a tiny regression config."""

import json
import math
from pathlib import Path

from mtl_lightning.cli import main
from mtl_lightning.compare import delta_m

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sincos_regression.yaml"
TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.init_args.n_train", "96",
    "--data.init_args.n_eval", "32",
    "--data.init_args.batch_size", "32",
    "--summary.print_table", "false",
]  # fmt: skip


def test_compare_runs_single_multi_and_groups(in_tmp, capsys):
    main(["compare", "--config", str(CONFIG), "--groups", "sin,cos", "--output", "c.json", *TINY])
    result = json.loads((in_tmp / "c.json").read_text())
    rows = {r["task"]: r for r in result["rows"]}
    assert set(rows) == {"sin", "cos"}
    for r in rows.values():
        assert r["metric"] == "mse" and r["single"] > 0 and r["multi"] > 0
        assert math.isclose(r["delta"], r["multi"] - r["single"])
        assert math.isclose(r["rel"], -100 * (r["multi"] - r["single"]) / r["single"])
    assert math.isclose(result["delta_m_percent"], (rows["sin"]["rel"] + rows["cos"]["rel"]) / 2)
    # the "sin,cos" group is the multi-task run again: same seed, same budget, same numbers
    assert result["groups"]["metrics"] == {"sin": rows["sin"]["multi"], "cos": rows["cos"]["multi"]}
    # single runs differ from the multi run (the other task's loss weight is 0)
    assert rows["sin"]["single"] != rows["sin"]["multi"]
    assert set(result["seconds"]) == {"multi", "single/sin", "single/cos", "group/sin,cos"}
    assert "delta_m" in capsys.readouterr().out
    assert len(list((in_tmp / "lightning_logs").iterdir())) == 4


def test_delta_m_sign_convention():
    assert delta_m({"acc": 0.5}, {"acc": 0.55}, {"acc": True}) > 0
    assert delta_m({"mse": 1.0}, {"mse": 1.1}, {"mse": False}) < 0
