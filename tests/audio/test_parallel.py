"""A really killed extraction (SIGKILL mid-write) leaves only whole entries, and a rerun resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mtl_lightning.audio.cache import _alive
from mtl_lightning.audio.extractor import FeatureSpec
from mtl_lightning.audio.parallel import extract_all
from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus

CHILD = Path(__file__).with_name("_extraction_child.py")


def test_sigkill_during_extraction_then_resume(tmp_path):
    spec = CorpusSpec(speakers=2, emotions=2, per_pair=3, min_seconds=0.2, max_seconds=0.3)
    manifest = write_corpus(tmp_path / "corpus", spec)
    paths = sorted(manifest.parent.rglob("*.wav")) + sorted(manifest.parent.rglob("*.flac"))
    n, done, workers = len(paths), len(paths) // 2, 2
    cache, held = tmp_path / "cache", tmp_path / "held"
    held.mkdir()
    # a fresh interpreter (forking this one after torch ran threads can hang), in its own
    # process group so that the kill reaches the extraction workers too
    args = [str(cache), str(held), str(workers), str(done), *map(str, paths)]
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), *args], start_new_session=True, stderr=subprocess.PIPE
    )
    try:  # wait until both workers are half-way through writing an entry
        deadline = time.monotonic() + 60
        while len(list(held.iterdir())) < workers:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the extraction never reached the held-up files"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    writers = {int(p.name) for p in held.iterdir()}
    deadline = time.monotonic() + 10  # the kill reaches the workers a moment later
    while any(_alive(pid) for pid in writers):
        assert time.monotonic() < deadline, f"extraction workers {writers} survived SIGKILL"
        time.sleep(0.02)
    entries = sorted(cache.rglob("*.pt"))
    assert len(entries) == done  # the files before the held-up ones, each moved in whole
    assert len(list(cache.rglob("*.tmp"))) == workers  # what the kill interrupted: not entries
    before = [torch.load(entry, weights_only=True) for entry in entries]  # each one whole

    resumed = extract_all(paths, FeatureSpec(n_mels=16), cache, workers=1, progress=False)
    assert (resumed.cached, resumed.computed, resumed.errors) == (done, n - done, {})
    assert not list(cache.rglob("*.tmp"))  # the dead writers' temp files are cleaned up
    fresh = extract_all(paths, FeatureSpec(n_mels=16), tmp_path / "fresh", progress=False)
    for a, b in zip(resumed.features, fresh.features, strict=True):
        assert torch.equal(a, b)
    for x in before:  # and right
        assert any(torch.equal(x, b) for b in fresh.features)


def test_progress_bar_counts_the_files_extracted(tmp_path, capsys):
    spec = CorpusSpec(speakers=1, emotions=2, per_pair=2, min_seconds=0.2, max_seconds=0.2)
    manifest = write_corpus(tmp_path / "corpus", spec)
    paths = sorted(manifest.parent.rglob("*.wav")) + sorted(manifest.parent.rglob("*.flac"))
    extract_all(paths, FeatureSpec(n_mels=16), tmp_path / "cache", progress=True)
    bar = capsys.readouterr().err
    assert "extracting logmel" in bar and "4/4" in bar and "file" in bar
    extract_all(paths, FeatureSpec(n_mels=16), tmp_path / "cache", progress=True)
    assert capsys.readouterr().err == ""  # everything cached: nothing to show
    extract_all(paths, FeatureSpec(n_mels=8), tmp_path / "cache", progress=False)
    assert capsys.readouterr().err == ""
