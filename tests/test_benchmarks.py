"""The benchmark command runs every benchmark on a tiny setting (no timing assertions).

One ``python -m benchmarks --tiny`` covers them all: each benchmark's ``run(tiny)`` in its own
process, as the full run does (a process per benchmark costs ~8 s of imports on 2 cores, so the
scripts are not started once more each)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_runner_tiny(tmp_path):
    """``python -m benchmarks --tiny`` runs every benchmark with a ``run`` (each in its own process) and
    prints one table with the machine, the ratios and peak memory."""
    import json

    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--json", str(out_json)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| benchmark | setting | value | unit | ratio | peak RSS MiB |" in proc.stdout
    assert "torch " in proc.stdout and "Lightning " in proc.stdout
    report = json.loads(out_json.read_text())
    names = {r["benchmark"] for r in report["rows"]}
    assert {"lightning_overhead", "affinity_overhead"} <= names
    assert report["failed"] == []
    for name in names:  # every benchmark has its baseline row
        assert any(r["ratio"] == 1.0 for r in report["rows"] if r["benchmark"] == name), name
    assert all(r["peak_rss_mib"] > 0 for r in report["rows"])
    assert report["machine"]["cpu"] and report["machine"]["torch"]
    settings = {(r["benchmark"], r["setting"]) for r in report["rows"]}
    assert {
        ("lightning_overhead", "MultiTaskModule + Trainer"),
        ("lightning_overhead", "hand-written PyTorch loop"),
        ("lightning_overhead", "dense five-task: MultiTaskModule + Trainer"),
        ("gradient_path", "dense K=2: MultiTaskModule + Trainer (UPGrad, shared)"),
        ("gradient_path", "dense K=2: torchjd mtl_backward"),
        ("gradient_path", "dense K=2: hand K-pass"),
        ("audio_throughput", "extract log-mel, 2 worker(s)"),
        ("audio_throughput", "loading / step (cached epoch), per batch"),
    } <= settings, settings
