"""Shared fixtures: CPU only, tiny data, outputs under tmp_path."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from mtl_lightning.data import SyntheticSpeechDataModule

# under pytest-xdist's two workers, one thread each (the machine's cores are shared)
torch.set_num_threads(
    1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, torch.get_num_threads())
)
warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture
def tiny_speech() -> SyntheticSpeechDataModule:
    """5 emotions x 11 speakers, 2 train / 1 eval utterance per pair, 16x16 feature maps."""
    return SyntheticSpeechDataModule(
        per_pair=2, per_pair_eval=1, n_mels=16, frames=16, batch_size=32
    )


@pytest.fixture(autouse=True)
def audio_corpus_for_audio_configs(request):
    """configs/audio_*.yaml read ``corpus/manifest.csv``, configs/tabular_*.yaml ``data/``,
    configs/seed_quality_images.yaml ``seed_images/``: write tiny generated data there."""
    callspec = getattr(request.node, "callspec", None)
    config = callspec.params.get("config") if callspec is not None else None
    if config is not None and Path(str(config)).name.startswith("audio_"):
        from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus

        spec = CorpusSpec(speakers=5, emotions=2, per_pair=3, min_seconds=0.3, max_seconds=0.5)
        write_corpus(request.getfixturevalue("tmp_path") / "corpus", spec)
    if config is not None and Path(str(config)).name.startswith("tabular_"):
        from mtl_lightning.data import write_example_table  # configs/tabular_*.yaml read data/

        write_example_table(request.getfixturevalue("tmp_path") / "data" / "five_tasks.csv", n=200)
    if config is not None and Path(str(config)).name.startswith("seed_quality_images"):
        from mtl_lightning.images.synthetic_corpus import ImageCorpusSpec, write_image_corpus

        spec = ImageCorpusSpec(n_images=48, size=32)  # the config reads seed_images/
        write_image_corpus(request.getfixturevalue("tmp_path") / "seed_images", spec)


@pytest.fixture
def one_thread():
    """One torch thread: a small model gains nothing from more, and the cores are shared (two
    threads on two busy cores spin and take ~10x the CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with tmp_path as the working directory (lightning_logs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# The slow files: real subprocess commands, two-process (DDP) runs, notebooks, benchmarks.
# They carry the `slow` marker (`python -m pytest -q -m "not slow"` leaves them out while you
# iterate) and go first, longest first (measured), so that pytest-xdist's `--dist loadfile`
# hands them out while the other worker still has short files to take: the suite ends when
# both workers do, not with one worker alone on a long file.
SLOW_FILES = [
    "test_docs_commands.py",
    "test_ddp_defaults.py",
    "test_resume.py",
    "test_ddp.py",
    "images/test_image_runs.py",
    "test_benchmarks.py",
    "test_fail_fast.py",
    "data/test_audio_streaming_runs.py",
    "data/test_tabular_streaming_runs.py",
    "test_resume_epoch_window.py",
    "test_docs_pages.py",
    "test_notebooks.py",
    "test_cli.py",
    "weighting/test_ddp_weighting.py",
    "test_checkpoint_selection.py",
    "test_outcome.py",
    "weighting/test_conformance.py",
    "test_nonfinite_ddp.py",
    "adversary/test_erase_cli.py",
    "data/test_audio_outcome.py",
    "test_probe.py",
]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a subprocess, two-process or multi-epoch run")
    config.addinivalue_line(
        "markers",
        "reproduce: the docs as written, at full length: the commands behind the measured "
        "tables, the pages run block by block, the notebooks; not in the default run "
        "(pyproject's addopts), `python -m pytest -q -m reproduce` runs them (.ci/run does, "
        "after the suite)",
    )


def pytest_collection_modifyitems(items):
    tests = Path(__file__).resolve().parent

    def rank(item) -> int:
        try:
            name = Path(str(item.fspath)).resolve().relative_to(tests).as_posix()
        except ValueError:  # a doctest module of the package
            return len(SLOW_FILES)
        return SLOW_FILES.index(name) if name in SLOW_FILES else len(SLOW_FILES)

    for item in items:
        if rank(item) < len(SLOW_FILES):
            item.add_marker(pytest.mark.slow)
    items.sort(key=rank)  # stable: the order within a file is kept
