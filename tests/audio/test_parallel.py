"""A really killed extraction (SIGKILL mid-run) leaves only whole entries, and a rerun resumes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import torch

from mtl_lightning.audio.extractor import FeatureSpec
from mtl_lightning.audio.parallel import extract_all
from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus


def _slow_extraction(paths, cache):
    """Runs in a forked child: extraction slowed down so the parent can kill it mid-way."""
    original = FeatureSpec.extract

    def slow(self, path):
        time.sleep(0.1)
        return original(self, path)

    FeatureSpec.extract = slow
    extract_all(paths, FeatureSpec(n_mels=16), cache, workers=1, progress=False)


def test_sigkill_during_extraction_then_resume(tmp_path):
    spec = CorpusSpec(speakers=3, emotions=2, per_pair=5, min_seconds=0.2, max_seconds=0.3)
    write_corpus(tmp_path / "corpus", spec)
    paths = sorted((tmp_path / "corpus").rglob("*.wav")) + sorted(
        (tmp_path / "corpus").rglob("*.flac")
    )
    cache = tmp_path / "cache"
    proc = multiprocessing.get_context("fork").Process(target=_slow_extraction, args=(paths, cache))
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while len(list(cache.rglob("*.pt"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert proc.exitcode == -signal.SIGKILL
    written = list(cache.rglob("*.pt"))
    assert 4 <= len(written) < len(paths) == 30, "the run was not killed mid-extraction"
    for entry in written:  # every visible entry is whole
        assert torch.load(entry, weights_only=True).shape[0] == 16
    resumed = extract_all(paths, FeatureSpec(n_mels=16), cache, progress=False)
    assert resumed.cached == len(written) and resumed.computed == 30 - len(written)
    fresh = extract_all(paths, FeatureSpec(n_mels=16), tmp_path / "fresh", progress=False)
    for a, b in zip(resumed.features, fresh.features, strict=True):
        assert torch.equal(a, b)
