"""The benchmark commands run on a tiny setting (no timing assertions)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lightning_overhead_benchmark_runs():
    out = subprocess.run(
        [sys.executable, "benchmarks/lightning_overhead.py", "--steps", "2", "--trials", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "| MultiTaskModule + Trainer |" in out and "| hand-written PyTorch loop |" in out


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


def test_audio_throughput_benchmark_runs():
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/audio_throughput.py",
            *("--speakers", "2", "--emotions", "2", "--per-pair", "2"),
            *("--steps", "1", "--batch-size", "4", "--trials", "1"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "| extract log-mel, 2 worker(s) |" in out and "| loading / step (cached epoch)" in out
