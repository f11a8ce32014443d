import json

import pytest

from mtl_lightning import TaskSpec
from mtl_lightning.callbacks.summary import tensorboard_layout
from mtl_lightning.summary import format_table, task_results, update_summary, verdict


@pytest.mark.parametrize(
    ("bacc", "expected"),
    [
        (1 / 11, "at chance"),
        (1 / 11 + 0.0499, "at chance"),
        (1 / 11 - 0.0499, "at chance"),
        (1 / 11 + 0.051, "above chance (leaks)"),
        (0.0, "below chance (leaks)"),  # confidently wrong still leaks the attribute
        (0.95, "above chance (leaks)"),
    ],
)
def test_adversary_verdict(bacc, expected):
    assert verdict(TaskSpec("speaker", 11, role="adversarial"), bacc) == expected


def test_main_task_verdict():
    spec = TaskSpec("emotion", 5)
    assert verdict(spec, 0.9) == "learned"
    assert verdict(spec, 0.22) == "not learned (at chance)"


def test_results_table_and_json(tmp_path):
    tasks = [
        TaskSpec("emotion", 5),
        TaskSpec("speaker", 11, role="adversarial"),
        TaskSpec("y", 2, kind="regression"),
    ]
    metrics = {
        "val/emotion/acc": 0.96,
        "val/emotion/balanced_acc": 0.95,
        "val/speaker/acc": 0.1,
        "val/speaker/balanced_acc": 0.1,
        "val/y/mse": 0.25,
        "val/y/mae": 0.4,
    }
    rows = task_results(tasks, metrics)
    table = format_table(rows).splitlines()
    assert table[1].split()[:4] == ["emotion", "main", "0.960", "0.950"]
    assert table[2].endswith("at chance")
    assert "mse 0.2500" in table[3]
    path = tmp_path / "summary.json"
    update_summary(path, "val", {"tasks": rows})
    update_summary(path, "test", {"tasks": []})
    data = json.loads(path.read_text())
    assert set(data) == {"val", "test"}
    assert data["val"]["tasks"][0]["f1"] is None  # NaN (not logged) becomes null, valid JSON
    assert not list(tmp_path.glob(".*tmp"))


def test_layout_puts_accuracy_and_chance_in_one_chart():
    layout = tensorboard_layout([TaskSpec("speaker", 11, role="adversarial")])
    chart = layout["val: accuracy vs chance"]["speaker"]
    assert chart[0] == "Multiline"
    assert {"val/speaker/acc", "val/speaker/balanced_acc", "val/speaker/chance"} <= set(chart[1])
