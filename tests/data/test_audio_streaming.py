"""StreamingAudioFeatureDataModule against the in-memory AudioFeatureDataModule on one corpus:
the same features, labels, statistics and bad-row reports; shards written once and extended;
a training order that reads few chunks, covers every row and is resumable."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from _manifest_io import read_rows as _rows
from _manifest_io import write_rows as _write

from mtl_lightning.data import (
    AudioFeatureDataModule,
    ManifestError,
    StreamingAudioFeatureDataModule,
)
from mtl_lightning.data import shards as shard_io

pytest.importorskip("litdata")

TINY = {"adversarial": ["speaker"], "n_mels": 32, "progress": False, "batch_size": 4}


def _pair(manifest: Path, tmp_path: Path, **kwargs) -> tuple[AudioFeatureDataModule, ...]:
    memory = AudioFeatureDataModule(str(manifest), cache_dir=str(tmp_path / "c"), **TINY, **kwargs)
    # 8 kB chunks: a few utterances each, so the corpus spans many chunks
    streaming = StreamingAudioFeatureDataModule(
        str(manifest), shard_dir=str(tmp_path / "s"), chunk_bytes="8KB", lanes=2,
        shuffle_window=2, **TINY, **kwargs,
    )  # fmt: skip
    for dm in (memory, streaming):
        dm.setup("fit")
    return memory, streaming


def _by_row(dataset) -> dict[int, dict]:
    return {item["index"]: item for item in (dataset[k] for k in range(len(dataset)))}


@pytest.mark.parametrize(
    "options",
    [
        {"split": "stratified", "normalize": "global", "crop_frames": None},
        {"split": "speaker_disjoint", "normalize": "per_speaker", "crop_frames": 20},
    ],
)
def test_streaming_reads_what_the_in_memory_path_holds(corpus, tmp_path, options):
    memory, streaming = _pair(corpus, tmp_path, **options)
    assert streaming.tasks == memory.tasks and streaming.vocab.names == memory.vocab.names
    torch.testing.assert_close(streaming.norm.mean, memory.norm.mean)
    torch.testing.assert_close(streaming.norm.std, memory.norm.std)
    assert streaming.norm.speakers.keys() == memory.norm.speakers.keys()
    for s, (mean, std) in memory.norm.speakers.items():
        torch.testing.assert_close(streaming.norm.speakers[s][0], mean)
        torch.testing.assert_close(streaming.norm.speakers[s][1], std)
    chunks = {x.chunk_key for x in streaming.datasets["all"].features}
    assert len(chunks) >= 6  # the comparison crosses chunk boundaries
    for split in ("train", "val", "test", "all"):
        want, got = _by_row(memory.datasets[split]), _by_row(streaming.datasets[split])
        assert got.keys() == want.keys(), split
        for row, item in want.items():
            if split != "train":  # training crops are random: compared through the loader below
                torch.testing.assert_close(got[row]["features"], item["features"])
            assert got[row]["targets"] == item["targets"], (split, row)
    # evaluation reads in storage order: each chunk once
    stored = [x.location for x in streaming.datasets["val"].features]
    assert stored == sorted(stored)


def test_training_epoch_covers_every_row_with_masks_and_workers(corpus, tmp_path):
    _, streaming = _pair(corpus, tmp_path)
    train_rows = sorted(streaming.datasets["train"].rows)
    epochs = []
    for workers in (0, 2):
        streaming.hparams.num_workers = workers
        loader = streaming.train_dataloader()
        batches = []
        for epoch in range(2):  # as Lightning does at each epoch's start
            loader.sampler.set_epoch(epoch)
            batches += list(loader)
        epochs.append(batches)
        seen = [int(i) for b in batches[: len(loader)] for i in b["index"]]
        assert sorted(seen) == train_rows  # every training row once (no padding on 1 process)
        b = batches[0]
        assert b["mask"].shape == b["features"].shape[::3] and b["mask"].any(1).all()
    first, second = ([b["index"].tolist() for b in e] for e in epochs)
    assert first == second  # workers change nothing
    half = len(first) // 2
    assert first[:half] != first[half:]  # a new order in epoch 2


def test_shards_are_written_once_reused_and_extended(corpus, tmp_path):
    manifest = tmp_path / "m" / "manifest.csv"
    shutil.copytree(corpus.parent, manifest.parent, ignore=shutil.ignore_patterns(".feature*"))
    shards = tmp_path / "shards"
    make = lambda **kw: StreamingAudioFeatureDataModule(  # noqa: E731
        str(manifest), shard_dir=str(shards), chunk_bytes="8KB", **{**TINY, **kw}
    )
    first = make()
    first.setup("fit")
    n = len(first.datasets["all"])
    assert (first.extraction.computed, first.extraction.cached) == (n, 0)
    (digest,) = shards.iterdir()
    assert len(list(digest.glob("part-*"))) == 1
    again = make()
    again.setup("fit")
    assert (again.extraction.computed, again.extraction.cached) == (0, n)
    # the corpus copied elsewhere (another machine's mount): its files are found in the shards
    copy = tmp_path / "elsewhere" / "manifest.csv"
    shutil.copytree(manifest.parent, copy.parent)
    moved = StreamingAudioFeatureDataModule(
        str(copy), shard_dir=str(shards), chunk_bytes="8KB", **TINY
    )
    moved.setup("fit")
    assert (moved.extraction.computed, moved.extraction.cached) == (0, n)
    # one more file: only it is computed, into a new part; the rest are read from the old one
    rows = _rows(manifest)
    shutil.copy(manifest.parent / rows[0]["path"], manifest.parent / "extra.wav")
    _write(manifest, [*rows, {**rows[0], "path": "extra.wav"}])
    grown = make()
    grown.setup("fit")
    assert (grown.extraction.computed, grown.extraction.cached) == (1, n)
    assert len(list(digest.glob("part-*"))) == 2
    # one LitData reader open at a time: reading the second part closes the first's
    items = grown.datasets["all"].features
    first, second = sorted({x.part for x in items}, key=lambda p: p.root)
    shard_io._CACHE.chunks.clear()  # decoded chunks would be read without a reader
    next(x for x in items if x.part is first).load()
    assert first._reader is not None
    shard_io._CACHE.chunks.clear()
    next(x for x in items if x.part is second).load()
    assert first._reader is None and second._reader is not None
    # other feature parameters: other shards, beside the first
    other = make(n_mels=24)
    other.setup("fit")
    assert other.extraction.computed == n + 1 and len(list(shards.iterdir())) == 2


def test_cache_dir_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="shard_dir"):
        StreamingAudioFeatureDataModule(str(corpus), cache_dir=str(tmp_path), **TINY)


def test_a_killed_writer_leaves_no_part_and_its_folder_is_removed(corpus, tmp_path):
    shards = tmp_path / "shards"
    dm = StreamingAudioFeatureDataModule(str(corpus), shard_dir=str(shards), **TINY)
    dm.setup("fit")
    (digest,) = shards.iterdir()
    # what a writer killed mid-part leaves: its temporary folder (a pid that no longer runs)
    dead = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 10_000
    stale = digest / f"{shard_io._TMP}{shard_io._HOST}-{dead}"
    stale.mkdir()
    (stale / "chunk-0-0.bin").write_bytes(b"half")
    again = StreamingAudioFeatureDataModule(str(corpus), shard_dir=str(shards), **TINY)
    again.setup("fit")
    assert not stale.exists() and again.extraction.computed == 0


def test_bad_rows_are_reported_as_the_in_memory_path_reports_them(corpus, tmp_path):
    manifest = tmp_path / "m" / "manifest.csv"
    shutil.copytree(corpus.parent, manifest.parent, ignore=shutil.ignore_patterns(".feature*"))
    rows = _rows(manifest)
    (manifest.parent / "empty.wav").write_bytes(b"")
    extra = [{**rows[0], "path": "empty.wav"}, {**rows[1], "path": "gone.wav"}]
    _write(manifest, [*rows, *extra])
    errors = []
    for cls, where in ((AudioFeatureDataModule, "cache_dir"), (StreamingAudioFeatureDataModule,
                                                               "shard_dir")):  # fmt: skip
        with pytest.raises(ManifestError) as err:
            cls(str(manifest), **{where: str(tmp_path / cls.__name__)}, **TINY).setup("fit")
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "gone.wav" in errors[0] and "empty.wav" in errors[0]
    skipped = StreamingAudioFeatureDataModule(
        str(manifest), shard_dir=str(tmp_path / "s2"), on_error="skip", **TINY
    )
    with pytest.warns(UserWarning):
        skipped.setup("fit")
    assert len(skipped.datasets["all"]) == len(rows)
    assert [p.line for p in skipped.skipped] == [len(rows) + 2, len(rows) + 3]


def test_the_chunk_cache_stays_small_and_decodes_each_chunk_once_per_pass(corpus, tmp_path):
    _, streaming = _pair(corpus, tmp_path)
    cache = shard_io._CACHE
    assert cache.size == 2 * 2 + 2  # lanes x shuffle_window + 2
    n_chunks = len({x.chunk_key for x in streaming.datasets["val"].features})
    cache.chunks.clear()
    before = cache.decoded
    for _ in streaming.val_dataloader():
        assert len(cache.chunks) <= cache.size
    assert cache.decoded - before == n_chunks
    before = cache.decoded
    for _ in streaming.train_dataloader():
        assert len(cache.chunks) <= cache.size
    train_chunks = len({x.chunk_key for x in streaming.datasets["train"].features})
    assert cache.decoded - before == train_chunks  # windows fit the cache: no chunk read twice


def test_checkpoint_state_and_restore(corpus, tmp_path):
    _, streaming = _pair(corpus, tmp_path)
    state = streaming.state_dict()
    restored = StreamingAudioFeatureDataModule(
        str(corpus), shard_dir=str(tmp_path / "s"), chunk_bytes="8KB", **TINY
    )
    restored.load_state_dict(json.loads(json.dumps(state, default=lambda t: t.tolist())) | {
        "norm": state["norm"]})  # fmt: skip
    restored.setup("test")
    torch.testing.assert_close(restored.norm.mean, streaming.norm.mean)
    assert restored.vocab.names == streaming.vocab.names


def test_conditions_missing_labels_and_the_manifest_split_stream_as_they_load(corpus, tmp_path):
    from test_audio_conditions import CONDITIONS, _seed_manifest

    manifest = _seed_manifest(corpus, tmp_path)
    options = {
        "label_columns": ["emotion", "speaker", "seed", "quality"],
        "partial_tasks": ["seed", "quality"],
        "conditions": CONDITIONS,
        "audio_root": str(corpus.parent),
        "split": "manifest",
        "crop_frames": 32,
    }
    memory, streaming = _pair(manifest, tmp_path, **options)
    assert streaming.tasks == memory.tasks  # quality: 3 classes, only where seed is yes
    for split in ("train", "val"):
        want, got = _by_row(memory.datasets[split]), _by_row(streaming.datasets[split])
        assert got.keys() == want.keys()
        for row, item in want.items():
            assert got[row]["targets"] == item["targets"], (split, row)  # -100 where missing
    missing = [r for r, i in _by_row(streaming.datasets["val"]).items()
               if int(i["targets"]["quality"]) == -100]  # fmt: skip
    assert missing and len(missing) < len(streaming.datasets["val"])
