"""`read_manifest` on its own: missing columns and conditional tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
from _manifest_io import read_rows, write_rows

from mtl_lightning.data import AudioFeatureDataModule, ManifestError
from mtl_lightning.data.manifest import read_manifest


def test_a_missing_label_column_names_the_column_and_the_file(corpus, tmp_path):
    manifest = write_rows(tmp_path / "no_emotion.csv", read_rows(corpus), ["path", "speaker"])
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest, corpus.parent, "path", ["emotion", "speaker"])
    message = str(err.value)
    assert str(manifest) in message
    assert "no column(s) ['emotion']" in message and "the header is ['path', 'speaker']" in message
    dm = AudioFeatureDataModule(
        str(manifest), audio_root=str(corpus.parent), adversarial=["speaker"], progress=False
    )
    with pytest.raises(ManifestError, match=r"no_emotion\.csv: no column\(s\) \['emotion'\]"):
        dm.setup("fit")


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "m.csv").write_text(text)
    return tmp_path / "m.csv"


def test_conditions_blank_labels_where_they_fail_and_require_them_where_they_hold(tmp_path):
    manifest = _write(
        tmp_path,
        "path,seed,quality\n"
        "a.wav,yes,good\n"  # line 2: graded
        "a.wav,no,n/a\n"  # line 3: placeholder, ignored
        "a.wav,no,\n"  # line 4: empty, fine
        "a.wav,yes,\n"  # line 5: a seed without a grade: bad row
        "a.wav,maybe,poor\n",  # line 6: graded too
    )
    rows, problems = read_manifest(
        manifest,
        None,
        "path",
        ["seed", "quality"],
        conditions={"quality": {"seed": ["yes", "maybe"]}},
    )
    assert [(r.line, r.labels["quality"]) for r in rows] == [
        (2, "good"),
        (3, None),
        (4, None),
        (6, "poor"),
    ]
    assert [str(p) for p in problems] == ["line 5: a.wav: no quality label (seed is 'yes')"]
    rows, problems = read_manifest(
        manifest,
        None,
        "path",
        ["seed", "quality"],
        partial=["quality"],
        conditions={"quality": {"seed": ["yes", "maybe"]}},
    )
    assert not problems and rows[3].labels["quality"] is None


def test_a_missing_condition_label_makes_the_task_missing(tmp_path):
    manifest = _write(tmp_path, "path,seed,quality\na.wav,,good\n")
    rows, problems = read_manifest(
        manifest,
        None,
        "path",
        ["seed", "quality"],
        partial=["seed"],
        conditions={"quality": {"seed": ["yes"]}},
    )
    assert not problems and rows[0].labels == {"seed": None, "quality": None}


def test_conditions_on_columns_that_are_not_labels_are_refused(tmp_path):
    manifest = _write(tmp_path, "path,seed,quality\na.wav,yes,good\n")
    with pytest.raises(ValueError, match=r"\['sprout'\] that are not label columns"):
        read_manifest(
            manifest, None, "path", ["seed", "quality"], conditions={"quality": {"sprout": ["y"]}}
        )
