"""Bad precomputed features and repeated bad rows: every one is listed, or skipped and counted."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_lightning.data import AudioFeatureDataModule, ManifestError


def _manifest(corpus: Path, tmp_path: Path) -> Path:
    with corpus.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["path"] = str(corpus.parent / row["path"])
    good = np.zeros((32, 12), np.float32)
    bad = {
        "nan.npy": np.where(np.arange(12) == 4, np.nan, good),
        "inf.pt": torch.from_numpy(np.where(np.arange(12) == 2, np.inf, good)),
        "flat.npy": np.zeros(12, np.float32),
        "empty.npy": np.zeros((32, 0), np.float32),
        "narrow.npy": np.zeros((16, 12), np.float32),
        "dict.pt": {"features": torch.zeros(32, 12)},
    }
    for name, value in bad.items():
        np.save(tmp_path / name, value) if name.endswith(".npy") else torch.save(
            value, tmp_path / name
        )
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    names = [*bad, "junk.npy", "gone1.wav", "gone2.flac"]
    for row, name in zip(rows[1::2], names, strict=False):  # lines 3, 5, ..., 19
        row["path"] = str(tmp_path / name)
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "m.csv"


EXPECTED = [
    (3, "nan.npy: NaN in features at frame(s) [4]"),
    (5, "inf.pt: inf in features at frame(s) [2]"),
    (7, "flat.npy: features must be [n_features, frames], got shape [12]"),
    (9, "empty.npy: empty features (0 frames)"),
    (11, "narrow.npy: 16 feature rows, the others have 32"),
    (13, "dict.pt: expected a tensor, got dict"),
    (15, "junk.npy: unreadable features"),
    (17, "gone1.wav: file not found"),
    (19, "gone2.flac: file not found"),
]


def test_every_bad_row_is_listed_or_skipped_with_a_count(corpus, tmp_path):
    manifest = _manifest(corpus, tmp_path)
    args = {"adversarial": ["speaker"], "n_mels": 32, "progress": False, "audio_root": "/"}
    args["cache_dir"] = str(corpus.parent / ".feature_cache")
    with pytest.raises(ManifestError) as err:
        AudioFeatureDataModule(str(manifest), **args).setup("fit")
    message = str(err.value)
    assert f"{len(EXPECTED)} bad row(s)" in message
    for line, reason in EXPECTED:
        assert f"line {line}: {tmp_path}/{reason}" in message, reason
    dm = AudioFeatureDataModule(str(manifest), on_error="skip", **args)
    with pytest.warns(UserWarning, match=rf"skipped {len(EXPECTED)} bad row\(s\), kept 15"):
        dm.setup("fit")
    assert [p.line for p in dm.skipped] == [line for line, _ in EXPECTED]
    assert len(dm.datasets["all"]) == 15
    assert {x.shape[0] for x in dm.datasets["all"].features} == {32}


def _with_extra_rows(corpus: Path, tmp_path: Path, extra: list[Path]) -> Path:
    with corpus.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["path"] = str(corpus.parent / row["path"])
    for path, row in zip(extra, rows[1::2], strict=False):  # lines 3, 5, ...
        row["path"] = str(path)
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "m.csv"


@pytest.mark.parametrize("workers", [1, 2])
def test_too_short_audio_and_other_extraction_failures_are_bad_rows(
    corpus, tmp_path, monkeypatch, workers
):
    import soundfile as sf

    from mtl_lightning.audio.extractor import FeatureSpec

    sf.write(tmp_path / "short.wav", np.full(100, 0.1, np.float32), 16000)  # n_fft=400: 201
    sf.write(tmp_path / "short22k.flac", np.full(250, 0.1, np.float32), 22050)  # 181 at 16 kHz
    sf.write(tmp_path / "boom.wav", np.full(4000, 0.1, np.float32), 16000)
    real = FeatureSpec.extract

    def extract(self, path):  # an unexpected error inside the feature code for one file
        if Path(path).name == "boom.wav":
            raise RuntimeError("something inside the feature code broke")
        return real(self, path)

    monkeypatch.setattr(FeatureSpec, "extract", extract)  # forked workers inherit it
    names = ["short.wav", "short22k.flac", "boom.wav"]
    manifest = _with_extra_rows(corpus, tmp_path, [tmp_path / n for n in names])
    args = {"adversarial": ["speaker"], "n_mels": 32, "progress": False, "audio_root": "/"}
    args |= {"cache_dir": str(corpus.parent / ".feature_cache"), "num_extract_workers": workers}
    with pytest.raises(ManifestError) as err:
        AudioFeatureDataModule(str(manifest), **args).setup("fit")
    message = str(err.value)
    assert "3 bad row(s)" in message
    for line, reason in [
        (3, "short.wav: too short: 100 samples, need at least 201 for n_fft=400"),
        (5, "short22k.flac: too short: 181 samples, need at least 201 for n_fft=400"),
        (7, "boom.wav: feature extraction failed (RuntimeError: something inside"),
    ]:
        assert f"line {line}: {tmp_path}/{reason}" in message, message
    dm = AudioFeatureDataModule(str(manifest), on_error="skip", **args)
    with pytest.warns(UserWarning, match=r"skipped 3 bad row\(s\), kept 21"):
        dm.setup("fit")
    assert [p.line for p in dm.skipped] == [3, 5, 7] and len(dm.datasets["all"]) == 21
