"""The audio manifest's row and label checks: duplicated paths, rare and near-duplicate labels,
Latin-1 / UTF-16 manifests and exact line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from _manifest_io import read_rows, write_rows

from mtl_lightning.data import AudioFeatureDataModule, ManifestError
from mtl_lightning.data.encodings import TextEncodingError
from mtl_lightning.data.manifest import read_manifest


def _dm(manifest: Path, corpus: Path, **kwargs) -> AudioFeatureDataModule:
    args = {"adversarial": ["speaker"], "n_mels": 16, "progress": False, "batch_size": 8}
    args |= {"audio_root": str(corpus.parent), "cache_dir": str(corpus.parent / ".feature_cache")}
    return AudioFeatureDataModule(str(manifest), **{**args, **kwargs})


def test_a_duplicated_path_names_both_lines_unless_allowed(corpus, tmp_path):
    rows = read_rows(corpus)
    rows.insert(5, dict(rows[1]))  # line 7 repeats line 3
    manifest = write_rows(tmp_path / "m.csv", rows)
    with pytest.raises(
        ManifestError, match=r"line 7: .*: the same file as line 3 \(a duplicate row\)"
    ):
        _dm(manifest, corpus).setup("fit")
    dm = _dm(manifest, corpus, allow_duplicates=True)
    dm.setup("fit")
    assert len(dm.datasets["all"]) == len(rows)


def test_near_duplicate_and_rare_labels_name_both_labels_and_lines(corpus, tmp_path):
    rows = read_rows(corpus)
    rows[0]["emotion"] = rows[0]["emotion"].capitalize()  # e.g. 'Neutral' at line 2
    manifest = write_rows(tmp_path / "m.csv", rows)
    label = rows[0]["emotion"]
    with pytest.raises(ManifestError) as error:
        _dm(manifest, corpus).setup("fit")
    message = str(error.value)
    assert f"emotion: labels {label!r} and {label.strip().lower()!r} look like one label" in message
    assert f"emotion: label {label!r} is seen in 1 row(s)" in message and "line(s) 2" in message
    dm = _dm(manifest, corpus, min_label_count=1, near_duplicate_check=False)
    dm.setup("fit")
    assert label in dm.vocab.names["emotion"]


def _manifest(tmp_path: Path, text: str, encoding: str) -> Path:
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "b.wav").write_bytes(b"")
    path = tmp_path / "m.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_latin1_manifest_is_an_error_naming_the_line_and_the_setting(tmp_path):
    manifest = _manifest(tmp_path, "path,emotion\na.wav,sad\nb.wav,gl\xfccklich\n", "latin-1")
    with pytest.raises(
        TextEncodingError, match=r"m\.csv: line 3 is not valid UTF-8.*encoding: latin-1"
    ):
        read_manifest(manifest, None, "path", ["emotion"])
    rows, _ = read_manifest(manifest, None, "path", ["emotion"], encoding="latin-1")
    assert [r.labels["emotion"] for r in rows] == ["sad", "glücklich"]
    dm = AudioFeatureDataModule(str(manifest), label_columns=["emotion"], progress=False)
    with pytest.raises(TextEncodingError, match="encoding: latin-1"):
        dm.setup("fit")


def test_utf16_manifest_with_crlf_and_a_blank_line_keeps_its_line_numbers(tmp_path):
    text = "path,emotion\r\na.wav,sad\r\n\r\nc.wav,gl\xfccklich\r\n"
    rows, problems = read_manifest(_manifest(tmp_path, text, "utf-16"), None, "path", ["emotion"])
    assert [(r.line, r.labels["emotion"]) for r in rows] == [(2, "sad")]
    assert [str(p) for p in problems] == ["line 4: c.wav: file not found"]
