"""The benchmark command runs every benchmark on a tiny setting (no timing assertions).

One ``python -m benchmarks --tiny`` covers them all: each benchmark's ``run(tiny)`` in its own
process, as the full run does (a process per benchmark costs ~8 s of imports on 2 cores, so the
scripts are not started once more each)."""

import subprocess
import sys
from pathlib import Path

import pytest

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
        timeout=600,
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
        (
            "lightning_overhead",
            "dense five-task: bare LightningModule + Trainer (the summed loss only)",
        ),
        ("peak_memory", "hand-written PyTorch loop"),
        ("peak_memory", "bare LightningModule + Trainer"),
        ("peak_memory", "python -m mtl_lightning fit"),
        ("gradient_path", "dense K=2: MultiTaskModule + Trainer (UPGrad, shared)"),
        ("gradient_path", "dense K=2: torchjd mtl_backward"),
        ("gradient_path", "dense K=2: hand K-pass"),
        ("audio_throughput", "extract log-mel, 2 worker(s)"),
        ("audio_throughput", "loading / step (cached epoch), per batch"),
        ("streaming", "in-memory 1x: peak RSS"),
        ("streaming", "streaming 10x: peak RSS"),
        ("streaming", "streaming 10x: data RSS (peak - after imports)"),
        ("streaming", "training step, streaming loader (1x, whole utterances)"),
        ("streaming", "write shards (log-mel 40, 2 workers): streaming"),
        ("streaming_tables", "streaming 10x read: peak RSS"),
        ("streaming_tables", "streaming 10x write: peak RSS"),
        ("streaming_tables", "in-memory 10x read: data RSS (peak - after imports)"),
        ("streaming_tables", "training step, streaming loader (1x, dense five-task)"),
        ("streaming_tables", "read the table: streaming (two passes + shards)"),
    } <= settings, settings


@pytest.mark.reproduce
def test_gpu_check_script_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh with ``--accelerator cpu --quick``: every step of the GPU check
    (the fits, the probe, the CPU comparisons, the interleaved ratios) runs and one table comes
    out; on a GPU the same script runs with its defaults (no figure here means anything)."""
    import json

    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out),
         "--accelerator", "cpu", "--precision", "32-true", "--quick"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert "| check | value | reference | ok |" in proc.stdout, proc.stderr[-3000:]
    rows = json.loads((out / "gpu_check.json").read_text())
    checks = {r["check"] for r in rows}
    assert "default fit: emotion balanced acc" in checks
    assert "five_task_affinity.yaml: affinity correlation with the CPU's" in checks
    assert any(c.startswith("dense K=5: UPGrad (shared) / torchjd") for c in checks)
    # one quick epoch learns little: the exit status follows the checks, 0 or 1, never a crash
    assert proc.returncode == (1 if any(r["ok"] is False for r in rows) else 0)
