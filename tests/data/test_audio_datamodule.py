"""AudioFeatureDataModule on a generated corpus: features, cache, vocab, splits, masks, bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch
from _manifest_io import read_rows as _rows
from _manifest_io import write_rows as _write

from mtl_lightning import MultiTaskModule
from mtl_lightning.audio import load_audio, log_mel_spectrogram
from mtl_lightning.audio.extractor import FeatureSpec
from mtl_lightning.data import AudioFeatureDataModule, LabelledPredictionWriter, ManifestError
from mtl_lightning.nn import CNNTrunk


def _dm(manifest: Path, cache: Path | None = None, **kwargs) -> AudioFeatureDataModule:
    """Tiny settings; ``cache=None`` shares the corpus's own cache (beside its manifest)."""
    args = {"adversarial": ["speaker"], "n_mels": 32, "progress": False, "batch_size": 8}
    if cache is not None:
        args["cache_dir"] = str(cache)
    return AudioFeatureDataModule(str(manifest), **{**args, **kwargs})


def _shared(corpus: Path) -> Path:
    return corpus.parent / ".feature_cache"


def test_tasks_and_vocab_come_from_the_manifest(corpus, tmp_path):
    dm = _dm(corpus, _shared(corpus))
    assert [(t.name, t.size, t.role) for t in dm.tasks] == [
        ("emotion", 3, "main"),
        ("speaker", 4, "adversarial"),
    ]
    assert dm.vocab.names == {
        "emotion": ["happy", "neutral", "sad"],
        "speaker": ["spk00", "spk01", "spk02", "spk03"],
    }
    dm.setup("fit")
    everything = dm.datasets["all"]
    assert len(everything) == 24  # the 'gender' column is ignored, every row is used
    for k, row in enumerate(everything.rows):
        line = _rows(corpus)[row]
        assert dm.vocab.decode("emotion", [everything.targets["emotion"][k]]) == [line["emotion"]]


def test_features_are_decoded_mixed_down_and_resampled(corpus, tmp_path):
    dm = _dm(corpus, _shared(corpus))
    dm.setup("fit")
    rows = _rows(corpus)
    kinds = set()
    for k, row in enumerate(dm.datasets["all"].rows):
        path = corpus.parent / rows[row]["path"]
        info = sf.info(str(path))
        kinds.add((path.suffix, info.samplerate, info.channels))
        waveform = load_audio(path, 16000)
        assert abs(waveform.shape[0] - info.frames * 16000 / info.samplerate) <= 1  # resampled
        x = dm.datasets["all"].features[k]
        assert x.shape == (32, waveform.shape[0] // 160 + 1)
        expected = log_mel_spectrogram(torch.from_numpy(waveform), 16000, n_mels=32)
        torch.testing.assert_close(x, expected)
    # WAV and FLAC, each at 16 kHz (no resampling) and at 22.05 kHz (soxr), mono and stereo
    assert {(s, r) for s, r, _ in kinds} == {
        (".wav", 16000),
        (".wav", 22050),
        (".flac", 16000),
        (".flac", 22050),
    }
    assert {c for *_, c in kinds} == {1, 2}


def test_stereo_is_mixed_down_and_22k_resampled_to_16k(tmp_path):
    t = np.arange(22050) / 22050
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1000 * t)
    sf.write(tmp_path / "a.flac", np.stack([left, right], 1) * 0.4, 22050, subtype="PCM_16")
    x = load_audio(tmp_path / "a.flac", 16000)
    assert x.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(x))
    assert sorted(np.argsort(spectrum)[-2:].tolist()) == [440, 1000]  # 1 Hz bins, both channels


def test_mfcc_and_precomputed_features(corpus, tmp_path):
    dm = _dm(corpus, _shared(corpus), features="mfcc", n_mfcc=13)
    dm.setup("fit")
    assert {x.shape[0] for x in dm.datasets["all"].features} == {13}
    # the same corpus as precomputed .npy / .pt files gives the same features
    rows = _rows(corpus)
    for i, row in enumerate(rows):
        x = FeatureSpec("mfcc", n_mels=32, n_mfcc=13).extract(corpus.parent / row["path"])
        name = f"feat{i}.npy" if i % 2 else f"feat{i}.pt"
        np.save(tmp_path / name, x.numpy()) if i % 2 else torch.save(x, tmp_path / name)
        row["path"] = name
    pre = _dm(_write(tmp_path / "pre.csv", rows), tmp_path / "other")
    pre.setup("fit")
    assert pre.extraction.precomputed == 24 and pre.extraction.computed == 0
    for a, b in zip(pre.datasets["all"].features, dm.datasets["all"].features, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("opensmile") is None, reason="opensmile missing"
)
def test_egemaps_through_opensmile(corpus, tmp_path):
    rows = _rows(corpus)[:4]
    dm = _dm(
        _write(tmp_path / "m.csv", rows),
        _shared(corpus),
        features="egemaps",
        audio_root=str(corpus.parent),
    )
    features = dm._load_features()
    assert {x.shape[0] for x in features} == {25}
    assert all(x.shape[1] > 10 and bool(torch.isfinite(x).all()) for x in features)


def test_egemaps_without_opensmile_names_the_extra(corpus, tmp_path, monkeypatch):
    from mtl_lightning.audio import egemaps

    egemaps._smile.cache_clear()
    monkeypatch.setitem(sys.modules, "opensmile", None)  # import opensmile -> ImportError
    with pytest.raises(ImportError, match=r'pip install "mtl_lightning\[opensmile\]"'):
        FeatureSpec("egemaps").extract(corpus.parent / _rows(corpus)[0]["path"])
    egemaps._smile.cache_clear()


def test_second_run_reads_the_cache_and_new_parameters_recompute(corpus, tmp_path):
    first = _dm(corpus, tmp_path)
    first.setup("fit")
    assert (first.extraction.computed, first.extraction.cached) == (24, 0)
    second = _dm(corpus, tmp_path)
    second.setup("fit")
    assert (second.extraction.computed, second.extraction.cached) == (0, 24)
    for a, b in zip(first.datasets["all"].features, second.datasets["all"].features, strict=True):
        assert torch.equal(a, b)
    other = _dm(corpus, tmp_path, n_mels=16)
    other.setup("fit")
    assert (other.extraction.computed, other.extraction.cached) == (24, 0)


def test_parallel_extraction_equals_serial(corpus, tmp_path):
    serial = _dm(corpus, _shared(corpus))
    parallel = _dm(corpus, tmp_path, num_extract_workers=2)
    serial.setup("fit")
    parallel.setup("fit")
    assert parallel.extraction.computed == 24
    for a, b in zip(
        serial.datasets["all"].features, parallel.datasets["all"].features, strict=True
    ):
        torch.testing.assert_close(a, b)


def test_crash_leftovers_are_ignored_and_extraction_resumes(corpus, tmp_path):
    complete = _dm(corpus, tmp_path)
    complete.setup("fit")
    entries = sorted(tmp_path.rglob("*.pt"))
    assert len(entries) == 24
    for entry in entries[::3]:  # a killed run: these were never written ...
        entry.unlink()
    (entries[0].parent / "tmpkilled.tmp").write_bytes(b"half a torch.save")  # ... one half-written
    resumed = _dm(corpus, tmp_path)
    resumed.setup("fit")
    assert (resumed.extraction.computed, resumed.extraction.cached) == (8, 16)
    for a, b in zip(
        complete.datasets["all"].features, resumed.datasets["all"].features, strict=True
    ):
        assert torch.equal(a, b)


def test_touching_a_file_invalidates_its_entry(corpus, tmp_path):
    manifest = tmp_path / "copy" / "manifest.csv"
    shutil.copytree(corpus.parent, manifest.parent, ignore=shutil.ignore_patterns(".feature_cache"))
    _dm(manifest, tmp_path).setup("fit")
    first = manifest.parent / _rows(manifest)[0]["path"]
    data, sr = sf.read(first)
    sf.write(first, data * 0.5, sr, subtype="PCM_16")  # same path, new content and mtime
    again = _dm(manifest, tmp_path)
    again.setup("fit")
    assert (again.extraction.computed, again.extraction.cached) == (1, 23)


def test_bad_input_lists_every_offending_row(corpus, tmp_path):
    rows = _rows(corpus)
    for row in rows:
        row["path"] = str(corpus.parent / row["path"])
        row["split"] = "train"
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all")
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    nan = np.zeros((32, 20), np.float32)
    nan[3, 7] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    rows[1]["path"] = str(tmp_path / "missing.wav")
    rows[3]["path"] = str(tmp_path / "garbage.wav")
    rows[5]["path"] = str(tmp_path / "empty.wav")
    rows[7]["emotion"] = ""
    rows[9]["split"] = "dev"
    rows[11]["path"] = str(tmp_path / "nan.npy")
    for row in rows[12:16]:
        row["split"] = "val"
    manifest = _write(tmp_path / "bad.csv", rows)
    dm = _dm(manifest, _shared(corpus), split="manifest", audio_root="/")
    with pytest.raises(ManifestError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "6 bad row(s)" in message
    for line, reason in [
        (3, "missing.wav: file not found"),
        (5, "garbage.wav: unreadable audio"),
        (7, "empty.wav: empty audio (0 samples)"),
        (9, "no emotion label"),
        (11, "unknown split 'dev'"),
        (13, "nan.npy: NaN in features at frame(s) [7]"),
    ]:
        assert f"line {line}: " in message and reason in message
    skipping = _dm(manifest, _shared(corpus), split="manifest", audio_root="/", on_error="skip")
    with pytest.warns(UserWarning, match=r"skipped 6 bad row\(s\), kept 18"):
        skipping.setup("fit")
    assert [p.line for p in skipping.skipped] == [3, 5, 7, 9, 11, 13]
    assert len(skipping.datasets["train"]) == 14 and len(skipping.datasets["val"]) == 4


def test_partial_tasks_turn_empty_cells_into_missing_labels(corpus, tmp_path):
    rows = _rows(corpus)
    for row in rows[:5]:
        row["emotion"] = ""
    manifest = _write(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError, match="5 bad row"):
        _dm(manifest, _shared(corpus), audio_root=str(corpus.parent)).setup("fit")
    dm = _dm(manifest, _shared(corpus), audio_root=str(corpus.parent), partial_tasks=["emotion"])
    dm.setup("fit")
    everything = dm.datasets["all"]
    missing = [
        r for r, y in zip(everything.rows, everything.targets["emotion"], strict=True) if y == -100
    ]
    assert sorted(missing) == [0, 1, 2, 3, 4]


def test_speaker_disjoint_split_scores_each_task_where_it_means_something(tmp_path):
    from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus

    spec = CorpusSpec(speakers=6, emotions=2, per_pair=4, min_seconds=0.2, max_seconds=0.3)
    manifest = write_corpus(tmp_path / "c", spec)
    dm = _dm(
        manifest,
        tmp_path,
        split="speaker_disjoint",
        val_fraction=0.2,
        test_fraction=0.2,
        heldout_fraction=0.25,
    )
    dm.setup("fit")
    rows = _rows(manifest)
    speaker_of = lambda ds: [rows[r]["speaker"] for r in ds.rows]  # noqa: E731
    train_speakers = set(speaker_of(dm.datasets["train"]))
    assert dm.tasks[1].size == len(train_speakers) == 4
    assert dm.vocab.names["speaker"] == sorted(train_speakers)
    for split in ("val", "test"):
        ds = dm.datasets[split]
        emotion, speaker = ds.targets["emotion"], ds.targets["speaker"]
        spk = speaker_of(ds)
        unseen = [s not in train_speakers for s in spk]
        assert sum(unseen) == 8  # one unseen speaker x 8 utterances
        # emotion is scored on the unseen speaker only, the adversary on held-out seen utterances
        assert all((e >= 0) == u for e, u in zip(emotion.tolist(), unseen, strict=True))
        assert all((s >= 0) == (not u) for s, u in zip(speaker.tolist(), unseen, strict=True))
        assert set(ds.rows).isdisjoint(dm.datasets["train"].rows)
        seen = [dm.vocab.decode("speaker", [s])[0] for s in speaker.tolist() if s >= 0]
        assert seen == [s for s, u in zip(spk, unseen, strict=True) if not u]
    assert len(dm.datasets["val"]) + len(dm.datasets["test"]) == 16 + 8  # 2 held out per speaker


def test_stratified_split_keeps_emotion_proportions(corpus, tmp_path):
    dm = _dm(corpus, _shared(corpus), val_fraction=0.25, test_fraction=0.25)
    dm.setup("fit")
    for split, per_class in (("train", 4), ("val", 2), ("test", 2)):
        labels = dm.datasets[split].targets["emotion"].tolist()
        assert [labels.count(c) for c in range(3)] == [per_class] * 3


def test_whole_utterances_come_with_a_mask_the_trunk_respects(corpus, tmp_path):
    dm = _dm(corpus, _shared(corpus), batch_size=24, predict_split="all")
    dm.setup("fit")
    batch = next(iter(dm.predict_dataloader()))
    lengths = [x.shape[-1] for x in dm.datasets["all"].features]
    assert batch["mask"].dtype == torch.bool
    assert batch["mask"].shape == (24, batch["features"].shape[-1]) == (24, max(lengths))
    assert batch["mask"].sum(1).tolist() == lengths
    assert (
        float(
            batch["features"][~batch["mask"][:, None, None, :].expand_as(batch["features"])]
            .abs()
            .sum()
        )
        == 0
    )
    trunk = CNNTrunk().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        padded = trunk(batch["features"], mask=batch["mask"])
        for k in (0, 5, 17):
            alone = trunk(batch["features"][k : k + 1, ..., : lengths[k]])
            torch.testing.assert_close(padded[k : k + 1], alone, atol=1e-5, rtol=1e-5)
        unmasked = trunk(batch["features"])
    shortest = int(np.argmin(lengths))
    assert not torch.allclose(unmasked[shortest], padded[shortest], atol=1e-3)  # the mask matters


def test_crops_are_random_in_training_and_centred_in_evaluation(corpus, tmp_path):
    dm = _dm(corpus, _shared(corpus), crop_frames=20, normalize="none")
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    # seeded per (sample, epoch): new crops each epoch, the same crop for the same key, and the
    # global RNG (dropout's) untouched
    state = torch.random.get_rng_state()
    crops = {tuple(train[(0, epoch)]["features"][0, 0, :3].tolist()) for epoch in range(8)}
    assert len(crops) > 1 and train[(0, 3)]["features"].shape == (1, 32, 20)
    assert torch.equal(train[(0, 3)]["features"], train[(0, 3)]["features"])
    assert torch.equal(torch.random.get_rng_state(), state)
    other_seed = type(train)(train.features, train.targets, train.norm, train.speakers,
                             train.rows, crop_frames=20, train=True, seed=1)  # fmt: skip
    assert not all(torch.equal(other_seed[(0, e)]["features"], train[(0, e)]["features"])
                   for e in range(8))  # fmt: skip
    full = val.features[0]
    start = (full.shape[-1] - 20) // 2
    assert torch.equal(val[0]["features"][0], full[:, start : start + 20])
    assert "mask" not in next(iter(dm.train_dataloader()))


def test_global_statistics_come_from_training_and_per_speaker_removes_offsets(corpus, tmp_path):
    dm = _dm(corpus, _shared(corpus))
    dm.setup("fit")
    train = torch.cat([dm.norm(x) for x in dm.datasets["train"].features], dim=1)
    torch.testing.assert_close(train.mean(1), torch.zeros(32), atol=1e-4, rtol=0)
    torch.testing.assert_close(train.std(1, unbiased=False), torch.ones(32), atol=1e-4, rtol=0)
    per = _dm(corpus, _shared(corpus), normalize="per_speaker")
    per.setup("fit")
    everything = per.datasets["all"]
    for speaker in {s for s in everything.speakers}:
        own = [
            everything[k]["features"][0] for k, s in enumerate(everything.speakers) if s == speaker
        ]
        torch.testing.assert_close(torch.cat(own, 1).mean(1), torch.zeros(32), atol=1e-4, rtol=0)


def test_vocab_and_statistics_round_trip_through_checkpoint_and_predict(corpus, tmp_path):
    dm = _dm(corpus, _shared(corpus), crop_frames=32)
    model = MultiTaskModule(dm.tasks, trunk=CNNTrunk(channels=(4, 8, 8), out_features=16))
    trainer = pl.Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=pl.loggers.CSVLogger(tmp_path, name="runs"),
    )
    trainer.fit(model, datamodule=dm)
    run = Path(trainer.log_dir)
    saved = json.loads((run / "label_vocab.json").read_text())
    assert saved == dm.vocab.to_dict()
    assert json.loads((run / "feature_stats.json").read_text())["mode"] == "global"
    ckpt = next(run.rglob("*.ckpt"))
    assert torch.load(ckpt, weights_only=True)["AudioFeatureDataModule"]["vocab"] == saved

    # a manifest without any 'happy' row: its own vocabulary would shift every emotion index
    rows = [r for r in _rows(corpus) if r["emotion"] != "happy"]
    other = _dm(
        _write(tmp_path / "nohappy.csv", rows),
        _shared(corpus),
        crop_frames=32,
        audio_root=str(corpus.parent),
        predict_split="all",
    )
    assert other.vocab.names["emotion"] == ["neutral", "sad"]
    restored = MultiTaskModule.load_from_checkpoint(
        ckpt, trunk=CNNTrunk(channels=(4, 8, 8), out_features=16)
    )
    predictor = pl.Trainer(
        default_root_dir=tmp_path,
        logger=pl.loggers.CSVLogger(tmp_path, name="predict"),
        callbacks=[LabelledPredictionWriter()],
        enable_progress_bar=False,
    )
    outputs = predictor.predict(restored, datamodule=other, ckpt_path=ckpt)
    assert other.vocab.to_dict() == saved
    torch.testing.assert_close(other.norm.mean, dm.norm.mean)
    everything = other.datasets["all"]
    truth = other.vocab.decode("emotion", everything.targets["emotion"].tolist())
    assert truth == [rows[r]["emotion"] for r in everything.rows]  # re-encoded with saved vocab
    written = _rows(Path(predictor.log_dir) / "predictions.csv")
    assert len(written) == 16 == sum(len(o["emotion"]["pred"]) for o in outputs)
    assert [w["path"] for w in written] == [rows[r]["path"] for r in everything.rows]
    predicted = torch.cat([o["emotion"]["pred"] for o in outputs]).tolist()
    assert [w["emotion"] for w in written] == [saved["emotion"][i] for i in predicted]
    assert {w["speaker"] for w in written} <= set(saved["speaker"])


def test_fit_on_whole_utterances_passes_the_mask_to_the_trunk(corpus, tmp_path, monkeypatch):
    dm = _dm(corpus, _shared(corpus))
    trunk = CNNTrunk(channels=(4, 8, 8), out_features=16)
    seen = []
    original = trunk.forward
    monkeypatch.setattr(
        trunk, "forward", lambda x, mask=None: seen.append(mask) or original(x, mask)
    )
    model = MultiTaskModule(dm.tasks, trunk=trunk)
    trainer = pl.Trainer(fast_dev_run=True, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert (
        trainer.global_step == 1
        and seen
        and all(m is not None and m.dtype == torch.bool for m in seen)
    )


def test_the_data_summary_of_recordings_shows_splits_and_speakers(corpus):
    """What `fit` prints first (DataSummary), from the datamodule itself: sizes and labelled
    counts per split, and speakers per split where the split reads them (speaker-disjoint)."""
    from mtl_lightning.callbacks.data_summary import describe_data

    dm = _dm(corpus, _shared(corpus))
    assert dm.train_set is None  # nothing before setup()
    dm.setup("fit")
    text = describe_data(dm, dm.tasks)
    sizes = {s: len(getattr(dm, f"{s}_set")) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 24 and all(sizes.values())
    first = ", ".join(f"{s} {n}" for s, n in sizes.items())
    assert text.splitlines()[0] == f"Data (AudioFeatureDataModule): {first} samples"
    assert "speaker  classification        4   0.250  " in text
    assert "speakers:" not in text  # a stratified split does not read the speaker column
    disjoint = _dm(corpus, _shared(corpus), split="speaker_disjoint")
    disjoint.setup("fit")
    speakers = {s: len(set(getattr(disjoint, f"{s}_set").speakers)) for s in sizes}
    shown = describe_data(disjoint, disjoint.tasks).splitlines()[-1]
    assert shown == "speakers: " + ", ".join(f"{s} {n}" for s, n in speakers.items())
    assert speakers["train"] >= 2, shown
