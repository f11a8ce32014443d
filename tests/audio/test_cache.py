"""Cache hits skip recomputation; an interrupted write leaves neither a half entry nor its temp file."""

import io
import os
import subprocess
import sys

import pytest
import torch

from mtl_lightning.audio.cache import _HOST, FeatureCache


def test_second_run_does_not_recompute(tmp_path):
    src = tmp_path / "a.wav"
    src.write_bytes(b"abc")
    calls = []

    def compute(p):
        calls.append(p)
        return torch.arange(3.0)

    for _ in range(2):
        out = FeatureCache(tmp_path / "c", {"n_mels": 40}).get_or_compute(src, compute)
    assert len(calls) == 1 and out.tolist() == [0.0, 1.0, 2.0]
    FeatureCache(tmp_path / "c", {"n_mels": 64}).get_or_compute(src, compute)
    assert len(calls) == 2  # other parameters -> other key


def test_a_write_interrupted_mid_entry_leaves_no_entry_and_no_temp_file(tmp_path, monkeypatch):
    src = tmp_path / "a.wav"
    src.write_bytes(b"abc")
    cache = FeatureCache(tmp_path / "c", {})
    target = cache.path_for(src)
    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):  # half the bytes reach the disk, then a Ctrl-C
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute(src, lambda p: torch.ones(2))
    # neither a half entry under the real name nor the temp file it was written to remain
    assert not target.exists() and list(target.parent.iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)
    assert cache.load(src) is None
    assert cache.get_or_compute(src, lambda p: torch.zeros(2)).tolist() == [0.0, 0.0]
    assert torch.load(target, weights_only=True).tolist() == [0.0, 0.0]


def test_damaged_entry_is_recomputed(tmp_path):
    src = tmp_path / "a.wav"
    src.write_bytes(b"abc")
    cache = FeatureCache(tmp_path / "c", {})
    cache.get_or_compute(src, lambda p: torch.ones(2))
    target = cache.path_for(src)
    target.write_bytes(target.read_bytes()[:20])  # truncated by something else (disk, a copy)
    assert cache.load(src) is None and not target.exists()
    assert cache.get_or_compute(src, lambda p: torch.zeros(2)).tolist() == [0.0, 0.0]


def test_only_dead_writers_temp_files_are_removed(tmp_path):
    src = tmp_path / "a.wav"
    src.write_bytes(b"abc")
    cache = FeatureCache(tmp_path / "c", {})
    folder = cache.path_for(src).parent
    folder.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    names = {
        "dead": f"{'0' * 40}.{_HOST}-{dead}.x1.tmp",
        "alive": f"{'1' * 40}.{_HOST}-{os.getpid()}.x2.tmp",
        "other host": f"{'2' * 40}.elsewhere-{dead}.x3.tmp",
    }
    for name in names.values():
        (folder / name).write_bytes(b"half")
    assert cache.remove_stale_temp_files() == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([names["alive"], names["other host"]])
