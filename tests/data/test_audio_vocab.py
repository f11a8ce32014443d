"""Which classes get a head output, and configurations whose scores would mislead."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from _manifest_io import read_rows as _rows
from _manifest_io import write_rows as _write

from mtl_lightning.data import AudioFeatureDataModule


def _args(corpus: Path, **kwargs) -> dict:
    args = {"adversarial": ["speaker"], "n_mels": 32, "progress": False, "audio_root": "/"}
    return args | {"cache_dir": str(corpus.parent / ".feature_cache")} | kwargs


def test_a_class_whose_files_all_fail_gets_no_output_when_skipping(corpus, tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    rows = _rows(corpus)
    for row in rows:
        row["path"] = str(corpus.parent / row["path"])
        if row["emotion"] == "happy":
            row["path"] = str(tmp_path / "broken.wav")
    manifest = _write(tmp_path / "m.csv", rows)
    dm = AudioFeatureDataModule(str(manifest), on_error="skip", **_args(corpus))
    with pytest.warns(UserWarning, match=r"skipped 8 bad row\(s\), kept 16"):
        tasks = dm.tasks  # extraction runs first: the failures decide the classes
    assert dm.vocab.names["emotion"] == ["neutral", "sad"]
    assert [(t.name, t.size) for t in tasks] == [("emotion", 2), ("speaker", 4)]
    dm.setup("fit")
    assert len(dm.datasets["all"]) == 16
    assert set(dm.datasets["train"].targets["emotion"].tolist()) == {0, 1}


def test_stratified_split_needs_a_main_task(corpus):
    with pytest.raises(ValueError, match="every task .* is adversarial"):
        AudioFeatureDataModule(str(corpus), adversarial=["emotion", "speaker"], split="stratified")


def test_manifest_split_warns_about_speakers_only_in_val_or_test(corpus, tmp_path):
    rows = _rows(corpus)
    for row in rows:
        row["path"] = str(corpus.parent / row["path"])
        row["split"] = {"spk02": "val", "spk03": "test"}.get(row["speaker"], "train")
    manifest = _write(tmp_path / "m.csv", rows)
    dm = AudioFeatureDataModule(str(manifest), split="manifest", **_args(corpus))
    with pytest.warns(
        UserWarning, match=r"2 speaker\(s\) appear only in val/test \(spk02, spk03\)"
    ):
        dm.setup("fit")
    for row in rows:  # every speaker also in training: nothing to say
        if row["speaker"] in ("spk02", "spk03") and row["emotion"] == "happy":
            row["split"] = "train"
    quiet = AudioFeatureDataModule(str(_write(manifest, rows)), split="manifest", **_args(corpus))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        quiet.setup("fit")
