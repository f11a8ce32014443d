"""`python -m mtl_lightning compare` end to end on a tiny regression config."""

import json
import math
import re
from pathlib import Path

import pytest

from mtl_lightning.commands import main
from mtl_lightning.compare import delta_m

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sincos_regression.yaml"
# budget only: compare itself turns the runs' progress bars, model summaries and tables off
TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "1",
    "--data.init_args.n_train", "96",
    "--data.init_args.n_eval", "32",
    "--data.init_args.batch_size", "32",
]  # fmt: skip


def test_compare_runs_single_multi_and_groups(in_tmp, capsys):
    groups = ["--groups", "sin,cos;cos"]
    main(["compare", "--config", str(CONFIG), *groups, "--output", "c.json", *TINY])
    result = json.loads((in_tmp / "c.json").read_text())
    rows = {r["task"]: r for r in result["rows"]}
    assert set(rows) == {"sin", "cos"}
    for r in rows.values():
        assert r["metric"] == "mse" and r["single"] > 0 and r["multi"] > 0
        assert math.isclose(r["delta"], r["multi"] - r["single"])
        assert math.isclose(r["rel"], -100 * (r["multi"] - r["single"]) / r["single"])
    assert math.isclose(result["delta_m_percent"], (rows["sin"]["rel"] + rows["cos"]["rel"]) / 2)
    # the "sin,cos" group is the multi-task run again, the "cos" group the single cos run: same
    # seed, same budget, same numbers; each task is served by its best group (lowest mse)
    runs = {r["label"]: r for r in result["runs"]}
    assert runs["group sin,cos"]["metrics"] == runs["all"]["metrics"]
    assert runs["group cos"]["metrics"] == {"cos": rows["cos"]["single"]}  # sin: off, no value
    best_cos = min(rows["cos"]["single"], rows["cos"]["multi"])
    assert result["groups"]["metrics"] == {"sin": rows["sin"]["multi"], "cos": best_cos}
    # single runs differ from the multi run (the other task's loss weight is 0)
    assert rows["sin"]["single"] != rows["sin"]["multi"]
    assert runs["single sin"]["metrics"].keys() == {"sin"}
    assert set(result["seconds"]) == {
        "multi", "single/sin", "single/cos", "group/sin,cos", "group/cos"
    }  # fmt: skip
    assert len(list((in_tmp / "lightning_logs").iterdir())) == 5  # every run kept, inspectable
    for r in runs.values():  # with its own checkpoints and summary.json
        assert (Path(r["log_dir"]) / "summary.json").is_file()
        assert list((Path(r["log_dir"]) / "checkpoints").glob("*.ckpt"))
    _check_console(capsys.readouterr().out, rows)


def _check_console(out: str, rows: dict) -> None:
    lines = out.splitlines()
    progress = [line for line in lines if line.startswith("compare: run ")]
    assert [p.split(":")[1] for p in progress] == [f" run {i}/5" for i in range(1, 6)]
    assert all(" ... done in " in p for p in progress)
    assert "single-task cos ... done in" in progress[2] and "val mse cos " in progress[2]
    assert "sin" not in progress[2].split("done in")[1].split("(")[0]  # switched off: unreported
    # one final table, its rows labelled, groups included; no run's own per-task table
    assert out.count("Per-task results") == 0 and sum(x.startswith("metric ") for x in lines) == 1
    start = next(i for i, x in enumerate(lines) if x.startswith("run "))
    end = lines.index("", start)  # the table ends at the first blank line
    body = lines[start + 2 : end]  # after the "run" and "metric" header lines
    table = {re.split(r"\s{2,}", x)[0]: x for x in body}
    assert set(table) == {"single", "all", "group sin,cos", "group cos"}
    assert re.search(r"^group cos\s+off\s+\S+ \([+-]\d+\.\d%\)", table["group cos"])
    assert f"{rows['sin']['single']:.4g}" in table["single"]
    assert "not learned" not in out and "learned" not in out and "verdict" not in out
    assert "delta_m" in out and "Epoch 0" not in out and "Trainable params" not in out
    # 5 progress lines, the data (4), the table (8), Δm (2), where saved; each run once printed
    # its bars, model summary and table: 227 lines, 24.8 KB (stdout + stderr) for these 5 runs
    assert len(lines) < 30 and len(out) < 3000


def test_compare_help_documents_fit_pass_through(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.*" in out and "LightningCLI" in out
    example = "compare --config configs/five_task_affinity.yaml --trainer.max_epochs 3"
    assert example in " ".join(out.split())


def test_delta_m_sign_convention():
    assert delta_m({"acc": 0.5}, {"acc": 0.55}, {"acc": True}) > 0
    assert delta_m({"mse": 1.0}, {"mse": 1.1}, {"mse": False}) < 0
