"""Step time of MultiTaskModule under the Lightning Trainer vs a hand-written PyTorch loop.

Same trunk, heads, data, batch size and optimizer; the hand loop computes the same losses but
logs nothing. The two run interleaved in one process, step by step: at the start of every
Lightning step a callback runs one hand-loop step (its own copy of the model, optimizer and data
iterator). A Lightning step is timed from the end of that hand step to the start of the next
batch, so it holds the Trainer's loop, hooks, logging and data fetching; a hand step holds its
own data fetching. On a shared machine whose speed drifts by 10% within seconds, two adjacent
steps see the same machine: the ratio of their sums is steady to about 1%, where separate runs
of each loop gave ratios from 1.02 to 1.08 on the same host. Times are this process's CPU time
(one torch thread: the work done, little disturbed by other processes) and wall time.
Run: ``python benchmarks/lightning_overhead.py [--steps N] [--trials N]`` or, with the other
benchmarks, ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from mtl_lightning import GradientReversalSchedule, MultiTaskModule, SyntheticSpeechDataModule

warnings.filterwarnings("ignore")


def _model(data: SyntheticSpeechDataModule, validate: bool) -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(data.tasks, validate_inputs=validate)


def _hand_step(model, optimizer, batch) -> None:
    outputs = model(batch["features"])
    loss = sum(F.cross_entropy(outputs[t], y) for t, y in batch["targets"].items())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _cycle(loader):
    while True:
        yield from loader


class _Interleaved(pl.Callback):
    """Runs and times one hand-loop step before each Lightning step; times the Lightning steps
    in between (CPU and wall seconds, after ``warmup`` steps of each)."""

    def __init__(self, data: SyntheticSpeechDataModule, warmup: int) -> None:
        self.model = _model(data, validate=False).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.batches = iter(_cycle(data.train_dataloader()))
        self.warmup = warmup
        self.hand: list[tuple[float, float]] = []
        self.lightning: list[tuple[float, float]] = []
        self._end: tuple[float, float] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        start = (time.process_time(), time.perf_counter())
        if self._end is not None and trainer.global_step > self.warmup:
            self.lightning.append((start[0] - self._end[0], start[1] - self._end[1]))
        _hand_step(self.model, self.optimizer, next(self.batches))
        end = (time.process_time(), time.perf_counter())
        if trainer.global_step >= self.warmup:
            self.hand.append((end[0] - start[0], end[1] - start[1]))
        self._end = (time.process_time(), time.perf_counter())


def interleaved(data: SyntheticSpeechDataModule, steps: int, validate: bool) -> dict[str, float]:
    """One ``Trainer.fit`` of ``steps`` timed steps (after 3 warm-up steps) with the package's
    metrics, logging and GRL schedule, each step paired with a hand-loop step. Returns the CPU
    and wall ms per step of each and the ratios of their sums over the paired steps."""
    warmup = 3
    timer = _Interleaved(data, warmup)
    trainer = pl.Trainer(
        max_steps=steps + warmup + 1,  # the last step has no next batch start to end its timing
        accelerator="cpu",  # the hand loop runs on CPU too
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        callbacks=[timer, GradientReversalSchedule()],  # timer first: its hook starts the step
    )
    trainer.fit(_model(data, validate), data)
    n = min(len(timer.hand), len(timer.lightning))
    hand, light = timer.hand[:n], timer.lightning[:n]
    result = {}
    for i, kind in enumerate(("cpu", "wall")):
        h, lt = sum(x[i] for x in hand), sum(x[i] for x in light)
        result |= {f"hand_{kind}_ms": 1000 * h / n, f"lightning_{kind}_ms": 1000 * lt / n}
        result[f"{kind}_ratio"] = lt / h
    return result


LABELS = {
    "hand": "hand-written PyTorch loop",
    "lightning": "MultiTaskModule + Trainer",
    "lightning_nocheck": "MultiTaskModule + Trainer, validate_inputs=false",
}


def measure(
    steps: int, trials: int, data: SyntheticSpeechDataModule | None = None
) -> dict[str, dict[str, float]]:
    """Per loop: medians over ``trials`` fits of the CPU and wall ms per step and of the ratio
    to the hand-loop steps interleaved with them (the hand row: over every fit)."""
    if data is None:
        data = SyntheticSpeechDataModule()
    data.setup("fit")
    runs: dict[str, list[dict[str, float]]] = {"lightning": [], "lightning_nocheck": []}
    for _ in range(trials):
        runs["lightning"].append(interleaved(data, steps, validate=True))
        runs["lightning_nocheck"].append(interleaved(data, steps, validate=False))
    fits = runs["lightning"] + runs["lightning_nocheck"]
    result = {
        "hand": {
            "cpu_ms": statistics.median(f["hand_cpu_ms"] for f in fits),
            "wall_ms": statistics.median(f["hand_wall_ms"] for f in fits),
            "cpu_ratio": 1.0,
            "wall_ratio": 1.0,
        }
    }
    for key, values in runs.items():
        result[key] = {
            name: statistics.median(v[source] for v in values)
            for name, source in (
                ("cpu_ms", "lightning_cpu_ms"),
                ("wall_ms", "lightning_wall_ms"),
                ("cpu_ratio", "cpu_ratio"),
                ("wall_ratio", "wall_ratio"),
            )
        }
    return result


def run(tiny: bool = False) -> list[dict[str, object]]:
    """Rows for ``python -m benchmarks``: CPU ms per step and the ratio to the hand loop."""
    if tiny:
        data = SyntheticSpeechDataModule(per_pair=2, per_pair_eval=1, n_mels=16, frames=16)
        result = measure(steps=2, trials=1, data=data)
    else:
        result = measure(steps=60, trials=5)
    return [
        {
            "benchmark": "lightning_overhead",
            "setting": LABELS[key],
            "value": round(r["cpu_ms"], 2),
            "unit": "CPU ms/step",
            "ratio": round(r["cpu_ratio"], 3),
            "note": f"interleaved steps; wall {r['wall_ms']:.1f} ms, ratio {r['wall_ratio']:.3f}",
        }
        for key, r in result.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.steps, args.trials)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"lightning {pl.__version__}; default model, batch 64, {args.steps} interleaved steps x "
        f"{args.trials} fits per loop (medians over fits)"
    )
    print("| loop | ms / step | ratio vs hand loop | CPU ms / step | CPU ratio |")
    print("|---|---|---|---|---|")
    for key, label in LABELS.items():
        r = result[key]
        print(
            f"| {label} | {r['wall_ms']:.1f} | {r['wall_ratio']:.3f} "
            f"| {r['cpu_ms']:.1f} | {r['cpu_ratio']:.3f} |"
        )


if __name__ == "__main__":
    main()
