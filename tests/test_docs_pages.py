"""Every block of the docs' "Use your own model" and "Your data" pages runs as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from _doc_blocks import blocks, run_page

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.reproduce
def test_your_model_page_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))  # the page's `from mymodel import ...`
    outputs = run_page(DOCS / "your-model.md", tmp_path)
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    fit, evaluated = outputs[0], outputs[1]
    assert "emotion" in fit and "speaker" in fit
    assert f"using the run's config {run.resolve() / 'config.yaml'}" in evaluated
    assert "probe" in evaluated.lower() and "speaker" in evaluated
    sys.modules.pop("mymodel", None)


@pytest.mark.reproduce
def test_your_data_page_runs_as_written(tmp_path, capsys):
    (tmp_path / "configs").symlink_to(DOCS.parent / "configs")  # "from the repository root"
    outputs = run_page(DOCS / "your-data.md", tmp_path)
    assert (tmp_path / "data" / "five_tasks.csv").is_file()
    fit = outputs[0]
    table = fit[fit.index("Per-task results") :]
    assert [line.split()[0] for line in table.splitlines()[2:7]] == ["y1", "y2", "y3", "y4", "y5"]
    assert table.count("learned") >= 5 and "not learned" not in table
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "label_vocab.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    printed = capsys.readouterr().out  # the python blocks' figures
    mood, tags, baseline = (float(v) for v in re.search(
        r"mood balanced acc ([\d.]+), tags f1_macro ([\d.]+) \(baseline ([\d.]+)\)", printed
    ).groups())  # fmt: skip
    assert mood > 0.6 and tags > baseline + 0.1
    y1, mse = (
        float(v) for v in re.search(r"y1 balanced acc ([\d.]+).*mse ([\d.]+)", printed).groups()
    )
    assert y1 > 0.6 and mse < 1.0


def test_the_other_directory_needs_the_path_and_says_so(tmp_path):
    """The page's claim: without PYTHONPATH the command stops with the documented message."""
    from mtl_lightning.run_config import RunConfigError, check_importable

    (tmp_path / "config.yaml").write_text("model:\n  trunk:\n    class_path: mymodel.SmallCNN\n")
    with pytest.raises(RunConfigError, match="no module named 'mymodel' importable from"):
        check_importable(tmp_path / "config.yaml")
    shown = [b.code for b in blocks(DOCS / "your-model.md") if b.language == "text"]
    assert any("no module named 'mymodel' importable from" in s for s in shown)
