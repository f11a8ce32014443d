"""The GPU check: one command on a CUDA machine that says whether the package's results on the
GPU match the CPU's, and what its steps cost there (``benchmarks/gpu_check.sh``).

1. The default fit under ``--trainer.accelerator gpu --trainer.precision bf16-mixed``, checked
   against the CPU figures of the README's table (emotion learned, the speaker at chance),
   then ``probe`` on its checkpoint (the probes may not find the speaker much above chance).
2. ``configs/weighting_aggregation.yaml`` (UPGrad) and ``configs/five_task_affinity.yaml``
   (TaskAffinity) on the GPU (bf16-mixed) and on the CPU (fp32): per-task balanced accuracy
   within ``--tolerance``, affinity matrices that agree (correlation of the epoch-averaged
   off-diagonal entries).
3. Step-time ratios on the GPU, each loop interleaved step by step with its baseline
   (:mod:`benchmarks._interleave`), fp32: the package under the Trainer vs a hand loop
   (default CNN), and shared-level UPGrad vs the plain sum and torchjd's ``mtl_backward``.
4. Peak GPU memory of the default fit (``torch.cuda.max_memory_allocated``).

One table at the end; the exit status is 1 if a check failed. ``--accelerator cpu --quick``
runs every step on the CPU with short fits (the test of this script; no figures mean anything
then). Run: ``bash benchmarks/gpu_check.sh [OUT_DIR]`` (``python -m benchmarks._gpu_check``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
#: the README's CPU figures of the default run (docs: emotion 1.000, speaker 0.098, chance 0.091)
DEFAULT_EMOTION_MIN = 0.95
QUICK = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4"]


class PeakMemory(pl.Callback):
    """Writes the fit's peak GPU memory (MiB) to ``peak_memory.json`` in the run directory."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
        if trainer.is_global_zero and trainer.log_dir is not None:
            Path(trainer.log_dir, "peak_memory.json").write_text(json.dumps({"mib": peak}))


def _cli(cwd: Path, args: list[str]) -> float:
    """``python -m mtl_lightning *args`` in ``cwd``; its wall seconds (an error if it fails)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mtl_lightning", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"`mtl_lightning {' '.join(args)}` failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def _tasks(cwd: Path) -> dict[str, dict[str, Any]]:
    summary = json.loads((cwd / "lightning_logs/version_0/summary.json").read_text())
    return {t["task"]: t for t in summary["val"]["tasks"]}


def _device_args(accelerator: str, precision: str) -> list[str]:
    return ["--trainer.accelerator", accelerator, "--trainer.devices", "1",
            "--trainer.precision", precision]  # fmt: skip


def default_fit(out: Path, accelerator: str, precision: str, quick: bool) -> list[dict]:
    """Check 1: the default fit on the device, then ``probe`` on its checkpoint."""
    run = out / "default"
    args = [
        "fit",
        *_device_args(accelerator, precision),
        "--trainer.callbacks+=benchmarks._gpu_check.PeakMemory",
    ]
    seconds = _cli(run, [*args, *(QUICK if quick else [])])
    tasks = _tasks(run)
    ckpt = run / "lightning_logs/version_0/checkpoints/last.ckpt"
    _cli(run, ["probe", "--ckpt_path", str(ckpt), "--n_boot", "100"])
    summary = json.loads((run / "lightning_logs/version_0/summary.json").read_text())
    probe = max(r["balanced_acc"] for r in summary["probe"])
    peak = json.loads((run / "lightning_logs/version_0/peak_memory.json").read_text())["mib"]
    emotion, speaker = tasks["emotion"], tasks["speaker"]
    return [
        _row("default fit: emotion balanced acc", emotion["balanced_acc"], f">= {DEFAULT_EMOTION_MIN} (CPU 1.000)",
             emotion["balanced_acc"] >= DEFAULT_EMOTION_MIN),
        _row("default fit: speaker (best attacker)", speaker["balanced_acc"],
             f"verdict at chance (CPU 0.098, chance {speaker['chance']:.3f})", speaker["verdict"] == "at chance"),
        _row("default fit: best probe of the speaker", probe,
             "<= chance + 0.1 (CPU 0.140)", probe <= speaker["chance"] + 0.1),
        _row("default fit: wall seconds", seconds, "-"),
        _row("default fit: peak GPU memory (MiB)", peak, "-"),
    ]  # fmt: skip


def config_pair(out: Path, config: str, accelerator: str, precision: str, quick: bool,
                tolerance: float) -> list[dict]:  # fmt: skip
    """Check 2: ``config`` on the device and on the CPU; per-task balanced accuracy."""
    extra = ["--config", str(ROOT / "configs" / config), *(QUICK if quick else [])]
    on_device, on_cpu = out / f"{config}-device", out / f"{config}-cpu"
    _cli(on_device, ["fit", *extra, *_device_args(accelerator, precision)])
    _cli(on_cpu, ["fit", *extra, *_device_args("cpu", "32-true")])
    rows = []
    for task, row in _tasks(on_device).items():
        cpu = _tasks(on_cpu)[task]["balanced_acc"]
        ok = abs(row["balanced_acc"] - cpu) <= tolerance
        rows.append(_row(f"{config}: {task} balanced acc", row["balanced_acc"],
                         f"CPU {cpu:.3f} +- {tolerance}", ok))  # fmt: skip
    affinity = on_device / "lightning_logs/version_0/affinity.json"
    if affinity.is_file():
        rows.append(
            _affinity_row(config, affinity, on_cpu / "lightning_logs/version_0/affinity.json")
        )
    return rows


def _affinity_row(config: str, device_file: Path, cpu_file: Path) -> dict:
    from mtl_lightning.groups import load_affinity

    (_, a), (_, b) = load_affinity(device_file), load_affinity(cpu_file)
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    off = ~torch.eye(a.shape[0], dtype=torch.bool)
    corr = float(torch.corrcoef(torch.stack([a[off], b[off]]))[0, 1])
    return _row(f"{config}: affinity correlation with the CPU's", corr, ">= 0.8", corr >= 0.8)


def step_ratios(accelerator: str, quick: bool) -> list[dict]:
    """Check 3: interleaved step-time ratios on the device (fp32)."""
    from benchmarks import gradient_path, lightning_overhead

    steps, trials = (2, 1) if quick else (40, 3)
    overhead = lightning_overhead.measure(steps, trials, lightning_overhead.make_data("cnn", quick),
                                          accelerator=accelerator)["lightning"]  # fmt: skip
    rows = [
        _row("CNN: Lightning step / hand loop (wall)", overhead["wall_ratio"], "target <= 1.05")
    ]
    for model, k in [("cnn", 2), ("dense", 5)]:
        r = gradient_path.measure(model, k, steps * (5 if model == "dense" else 1), trials,
                                  tiny=quick, accelerator=accelerator)  # fmt: skip
        package, plain = r["lightning"], r["plain sum"]
        rows.append(_row(f"{model} K={k}: UPGrad (shared) / plain sum (wall)",
                         package["wall_ms"] / plain["wall_ms"], "-"))  # fmt: skip
        rows.append(_row(f"{model} K={k}: UPGrad (shared) / torchjd mtl_backward (wall)",
                         package["wall_ratio"], "target <= 1.05"))  # fmt: skip
    return rows


def _row(check: str, value: float, reference: str, ok: bool | None = None) -> dict:
    """One line of the table; ``ok`` None: a measurement, not a check (no timing is asserted)."""
    return {"check": check, "value": round(float(value), 3), "reference": reference, "ok": ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="gpu_check_out")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="short fits (a smoke test)")
    args = parser.parse_args(argv)
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine (or --accelerator cpu --quick)")
    out = Path(args.out)
    started = time.perf_counter()
    rows = default_fit(out, args.accelerator, args.precision, args.quick)
    for config in ("weighting_aggregation.yaml", "five_task_affinity.yaml"):
        rows += config_pair(
            out, config, args.accelerator, args.precision, args.quick, args.tolerance
        )
    rows += step_ratios(args.accelerator, args.quick)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"GPU check on {device}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s"
    )
    print("| check | value | reference | ok |\n|---|---|---|---|")
    for r in rows:
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(f"| {r['check']} | {r['value']} | {r['reference']} | {ok} |")
    (out / "gpu_check.json").write_text(json.dumps(rows, indent=1))
    return 1 if any(r["ok"] is False for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
