"""Shared fixtures: CPU only, tiny data, outputs under tmp_path."""

from __future__ import annotations

import warnings

import pytest
import torch

from mtl_lightning.data import SyntheticSpeechDataModule

torch.set_num_threads(max(1, torch.get_num_threads()))
warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture
def tiny_speech() -> SyntheticSpeechDataModule:
    """5 emotions x 11 speakers, 2 train / 1 eval utterance per pair, 16x16 feature maps."""
    return SyntheticSpeechDataModule(
        per_pair=2, per_pair_eval=1, n_mels=16, frames=16, batch_size=32
    )


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with tmp_path as the working directory (lightning_logs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
