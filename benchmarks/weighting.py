"""Step time of every weighting strategy relative to the plain sum, for 2 and 5 tasks.

Run: ``python benchmarks/weighting.py [--steps 30] [--repeats 3]``. The default model (CNN
trunk, 64-unit MLP heads, AdamW) on 40x64 log-mel-sized inputs, batch 64, each task 5 classes;
mean training-step time under the Lightning Trainer (no validation, no logger, CPU), best of
``--repeats`` alternating runs, as a ratio to ``StaticWeighting`` in the same run. Targets:
loss-based methods and FAMO with ``update="next_batch"`` <= 1.10x; FAMO's default
``"same_batch"`` (one extra forward pass per step, no backward) and rep-grad aggregation
<= 1.5x; parameter-level aggregation <= (K + 1)x.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torchjd.aggregation import MGDA, PCGrad, UPGrad

from mtl_lightning import MultiTaskModule
from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import (
    FAMO,
    DynamicWeightAverage,
    GradNorm,
    InverseMetricWeighting,
    JacobianAggregation,
    RandomLossWeighting,
    StaticWeighting,
    UncertaintyWeighting,
    WeightingStrategy,
)

warnings.filterwarnings("ignore")

STRATEGIES: dict[str, tuple[str, Callable[[], WeightingStrategy]]] = {
    "static (plain sum)": ("baseline", StaticWeighting),
    "inverse val metric": ("loss", InverseMetricWeighting),
    "uncertainty": ("loss", UncertaintyWeighting),
    "DWA": ("loss", DynamicWeightAverage),
    "RLW": ("loss", RandomLossWeighting),
    "FAMO": ("extra_forward", FAMO),
    "FAMO (next_batch)": ("loss", lambda: FAMO(update="next_batch")),
    "GradNorm (rep)": ("rep", lambda: GradNorm(level="rep")),
    "UPGrad (rep)": ("rep", lambda: JacobianAggregation(UPGrad(), level="rep")),
    "MGDA (rep)": ("rep", lambda: JacobianAggregation(MGDA(), level="rep")),
    "GradNorm (shared)": ("shared", GradNorm),
    "UPGrad (shared)": ("shared", lambda: JacobianAggregation(UPGrad())),
    "MGDA (shared)": ("shared", lambda: JacobianAggregation(MGDA())),
    "PCGrad (shared)": ("shared", lambda: JacobianAggregation(PCGrad())),
}


def _data(num_tasks: int, steps: int, batch: int) -> tuple[list[TaskSpec], DataLoader]:
    g = torch.Generator().manual_seed(0)
    n = steps * batch
    tasks = [TaskSpec(f"t{i}", 5) for i in range(num_tasks)]
    targets = {t.name: torch.randint(0, 5, (n,), generator=g) for t in tasks}
    dataset = TensorTaskDataset(torch.randn(n, 1, 40, 64, generator=g), targets)
    return tasks, DataLoader(dataset, batch_size=batch, shuffle=False)


def seconds_per_step(
    make: Callable[[], WeightingStrategy], num_tasks: int, steps: int, batch: int
) -> float:
    pl.seed_everything(0, verbose=False)
    tasks, loader = _data(num_tasks, steps, batch)
    model = MultiTaskModule(tasks, weighting=make())
    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, *args: object) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args: object) -> None:
            times.append(time.perf_counter() - self.start)

    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Timer()],
    )
    trainer.fit(model, loader)
    warm = times[2:] if len(times) > 4 else times
    return sum(warm) / len(warm)


def measure(
    task_counts: list[int], steps: int, repeats: int, batch: int
) -> dict[tuple[str, int], float]:
    """Best seconds per step over alternating repeats, per (strategy, number of tasks)."""
    best: dict[tuple[str, int], float] = {}
    seconds_per_step(StaticWeighting, task_counts[0], 3, batch)  # warm-up: one-time costs
    for _ in range(repeats):
        for k in task_counts:
            for name, (_, make) in STRATEGIES.items():
                t = seconds_per_step(make, k, steps, batch)
                best[(name, k)] = min(best.get((name, k), float("inf")), t)
    return best


def _target(kind: str, k: int) -> str:
    fixed = {"baseline": "1", "loss": "<= 1.10", "extra_forward": "<= 1.5", "rep": "<= 1.5"}
    return fixed[kind] if kind != "shared" else f"<= {k + 1}"


def run(tiny: bool = False) -> list[dict[str, object]]:
    """Rows for ``python -m benchmarks``: ms per step and the ratio to the plain sum."""
    counts = [2] if tiny else [2, 5]
    best = measure(counts, 3 if tiny else 30, 1 if tiny else 3, 8 if tiny else 64)
    rows = []
    for k in counts:
        base = best[("static (plain sum)", k)]
        for name, (kind, _) in STRATEGIES.items():
            t = best[(name, k)]
            rows.append(
                {
                    "benchmark": "weighting",
                    "setting": f"{name}, K={k}",
                    "value": round(1000 * t, 2),
                    "unit": "ms/step",
                    "ratio": 1.0 if kind == "baseline" else round(t / base, 3),
                    "note": f"target {_target(kind, k)}x",
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", type=int, nargs="+", default=[2, 5])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: less noise)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    best = measure(args.tasks, args.steps, args.repeats, args.batch_size)
    print("| strategy | K | ms/step | ratio to plain sum | target |")
    print("|---|---|---|---|---|")
    for k in args.tasks:
        base = best[("static (plain sum)", k)]
        for name, (kind, _) in STRATEGIES.items():
            t = best[(name, k)]
            print(f"| {name} | {k} | {1000 * t:.1f} | {t / base:.2f}x | {_target(kind, k)}x |")


if __name__ == "__main__":
    main()
