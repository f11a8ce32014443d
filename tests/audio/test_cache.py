"""Cache hits skip recomputation; a crash's leftover temp file does not poison the cache."""

import torch

from mtl_lightning.audio.cache import FeatureCache


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


def test_rebuild_after_simulated_crash(tmp_path):
    src = tmp_path / "a.wav"
    src.write_bytes(b"abc")
    cache = FeatureCache(tmp_path / "c", {})
    target = cache.path_for(src)
    target.parent.mkdir(parents=True)
    (target.parent / "zzzz.tmp").write_bytes(b"partial torch.save")  # killed mid-write
    out = cache.get_or_compute(src, lambda p: torch.ones(2))
    assert out.tolist() == [1.0, 1.0] and target.is_file()
    assert torch.load(target, weights_only=True).tolist() == [1.0, 1.0]
