"""A tiny generated corpus (WAV and FLAC, each at 16 and 22.05 kHz, some stereo) shared by a module."""

from __future__ import annotations

import pytest

from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 speakers x 3 emotions x 2 utterances of 0.3-0.6 s; returns the manifest path."""
    root = tmp_path_factory.mktemp("corpus")
    spec = CorpusSpec(speakers=4, emotions=3, per_pair=2, min_seconds=0.3, max_seconds=0.6)
    return write_corpus(root, spec)
