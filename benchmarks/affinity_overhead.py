"""Step-time overhead of the TaskAffinity callback on the five-task tabular setting.

Run: ``python benchmarks/affinity_overhead.py [--epochs 2] [--repeats 3]``. Prints the mean
training-step time with no callback and with ``TaskAffinity(every_n_steps=n)``, as a ratio to the
run without it (best of ``--repeats`` alternating runs; no validation, no logger, CPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch

from mtl_lightning import MultiTaskModule
from mtl_lightning.callbacks import TaskAffinity
from mtl_lightning.data import SyntheticTabularDataModule
from mtl_lightning.nn import DenseTrunk

warnings.filterwarnings("ignore")


def seconds_per_step(every: int | None, epochs: int) -> float:
    pl.seed_everything(0, verbose=False)
    dm = SyntheticTabularDataModule()
    model = MultiTaskModule(
        dm.tasks,
        trunk=DenseTrunk(120),
        head_hidden=16,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )
    callbacks = [] if every is None else [TaskAffinity(every_n_steps=every, log_image=False)]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        default_root_dir=tempfile.mkdtemp(prefix="affinity_overhead_"),  # affinity.json lands here
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return (time.perf_counter() - start) / trainer.global_step


def measure(epochs: int, repeats: int, every: list[int]) -> dict[int | None, float]:
    """Best seconds per step over ``repeats`` alternating runs, per setting (None: no callback)."""
    settings: list[int | None] = [None, *every]
    best = {s: float("inf") for s in settings}
    for _ in range(repeats):
        for s in settings:
            best[s] = min(best[s], seconds_per_step(s, epochs))
    return best


def run(tiny: bool = False) -> list[dict[str, object]]:
    """Rows for ``python -m benchmarks``: ms per step and the ratio to no callback."""
    best = measure(1, 1, [10]) if tiny else measure(2, 5, [10, 1])
    return [
        {
            "benchmark": "affinity_overhead",
            "setting": "no callback" if s is None else f"TaskAffinity(every_n_steps={s})",
            "value": round(1000 * t, 2),
            "unit": "ms/step",
            "ratio": round(t / best[None], 3),
            "note": "five-task tabular, best of repeats",
        }
        for s, t in best.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--every", type=int, nargs="+", default=[10, 1])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: less noise)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    best = measure(args.epochs, args.repeats, args.every)
    base = best[None]
    print(f"{'callback':<28}{'ms/step':>10}{'ratio':>8}")
    for s in best:
        name = "none" if s is None else f"TaskAffinity(every_n_steps={s})"
        print(f"{name:<28}{1000 * best[s]:>10.2f}{best[s] / base:>8.3f}")


if __name__ == "__main__":
    main()
