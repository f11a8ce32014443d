import json
import math

import pytest

from mtl_lightning import TaskSpec
from mtl_lightning.callbacks.summary import tensorboard_layout
from mtl_lightning.summary import (
    chance_interval,
    format_table,
    task_results,
    update_summary,
    verdict,
)


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


@pytest.mark.parametrize(
    ("k", "role", "score", "n", "expected"),
    [
        (2, "main", 0.9, 0, "no labelled samples"),
        (2, "main", float("nan"), 0, "no labelled samples"),
        (2, "main", 1.0, 1, "too few samples (n=1)"),  # one run's verdict rested on one sample
        (2, "main", 0.9, 29, "too few samples (n=29)"),
        (2, "main", 0.9, 30, "learned"),
        (3, "main", 0.05, 300, "not learned (below chance)"),  # was "(at chance)"
        (3, "main", 0.30, 300, "not learned (at chance)"),
        (3, "main", 0.30, float("nan"), "not learned (at chance)"),  # n unknown: ±0.05
        (2, "adversarial", 0.43, 40, "at chance"),  # inside the widened band, not ±0.05
        (2, "adversarial", 0.43, 10_000, "below chance (leaks)"),
        (2, "adversarial", 0.70, 40, "above chance (leaks)"),
    ],
)
def test_verdict_counts_samples_and_widens_the_band_with_the_binomial_error(
    k, role, score, n, expected
):
    assert verdict(TaskSpec("t", k, role=role), score, n=n) == expected


def test_chance_interval_is_the_tolerance_widened_to_the_binomial_error():
    low, high = chance_interval(TaskSpec("t", 2), n=40)
    assert high - 0.5 == pytest.approx(1.96 * math.sqrt(0.25 / 40)) and 0.5 - low == high - 0.5
    assert chance_interval(TaskSpec("t", 2), n=1e6) == pytest.approx((0.45, 0.55))
    tags = TaskSpec("tags", 3, kind="multilabel")
    row = task_results(
        [tags], {"val/tags/f1_macro": 0.5, "val/tags/baseline": 0.6, "val/tags/n": 99}
    )
    assert row[0]["chance_interval"] == pytest.approx([0.55, 0.65])
    assert row[0]["verdict"] == "not learned (below baseline)"
    reg = task_results([TaskSpec("r", 1, kind="regression")], {"val/r/n": 0})[0]
    assert reg["verdict"] == "no labelled samples" and "chance_interval" not in reg
