"""Step time of MultiTaskModule under the Lightning Trainer vs a hand-written PyTorch loop.

Same trunk, heads, data, batch size and optimizer; the hand loop computes the same losses but
logs nothing. Trials alternate between the loops so machine load affects them alike; the table
reports medians and their ratio, of wall time and of this process's CPU time (with one thread,
CPU time is the work done, much less disturbed by other processes on a shared machine).
Run: ``python benchmarks/lightning_overhead.py [--steps N] [--trials N]`` or, with the other
benchmarks, ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from mtl_lightning import GradientReversalSchedule, MultiTaskModule, SyntheticSpeechDataModule

warnings.filterwarnings("ignore")


def _model(data: SyntheticSpeechDataModule, validate: bool) -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(data.tasks, validate_inputs=validate)


def hand_loop(data: SyntheticSpeechDataModule, steps: int) -> tuple[float, float]:
    """Wall and CPU seconds per step of a plain loop: forward, summed cross-entropies,
    backward, AdamW step."""
    model = _model(data, validate=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = iter(_cycle(data.train_dataloader()))
    for _ in range(3):  # warm-up
        _hand_step(model, optimizer, next(batches))
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _hand_step(model, optimizer, next(batches))
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def _hand_step(model, optimizer, batch) -> None:
    outputs = model(batch["features"])
    loss = sum(F.cross_entropy(outputs[t], y) for t, y in batch["targets"].items())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _cycle(loader):
    while True:
        yield from loader


class _Timer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0
        self.cpu_start, self.cpu_end = 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end, self.cpu_end = time.perf_counter(), time.process_time()


def lightning_loop(
    data: SyntheticSpeechDataModule, steps: int, validate: bool
) -> tuple[float, float]:
    """Wall and CPU seconds per step of ``Trainer.fit`` with the package's metrics, logging and
    GRL schedule."""
    timer = _Timer(warmup=3)
    trainer = pl.Trainer(
        max_steps=steps + 3,
        accelerator="cpu",  # the hand loop runs on CPU too
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        callbacks=[GradientReversalSchedule(), timer],
    )
    trainer.fit(_model(data, validate), data)
    return (timer.end - timer.start) / steps, (timer.cpu_end - timer.cpu_start) / steps


LABELS = {
    "hand": "hand-written PyTorch loop",
    "lightning": "MultiTaskModule + Trainer",
    "lightning_nocheck": "MultiTaskModule + Trainer, validate_inputs=false",
}


def measure(
    steps: int, trials: int, data: SyntheticSpeechDataModule | None = None
) -> dict[str, dict[str, float]]:
    """Median wall and CPU milliseconds per step of each loop over alternating trials."""
    if data is None:
        data = SyntheticSpeechDataModule()
    data.setup("fit")
    runs: dict[str, list[tuple[float, float]]] = {key: [] for key in LABELS}
    for _ in range(trials):
        runs["hand"].append(hand_loop(data, steps))
        runs["lightning"].append(lightning_loop(data, steps, validate=True))
        runs["lightning_nocheck"].append(lightning_loop(data, steps, validate=False))
    return {
        key: {
            "wall_ms": 1000 * statistics.median(w for w, _ in values),
            "cpu_ms": 1000 * statistics.median(c for _, c in values),
        }
        for key, values in runs.items()
    }


def run(tiny: bool = False) -> list[dict[str, object]]:
    """Rows for ``python -m benchmarks``: CPU ms per step and the ratio to the hand loop."""
    if tiny:
        data = SyntheticSpeechDataModule(per_pair=2, per_pair_eval=1, n_mels=16, frames=16)
        result = measure(steps=2, trials=1, data=data)
    else:
        result = measure(steps=40, trials=9)
    base = result["hand"]
    return [
        {
            "benchmark": "lightning_overhead",
            "setting": LABELS[key],
            "value": round(r["cpu_ms"], 2),
            "unit": "CPU ms/step",
            "ratio": round(r["cpu_ms"] / base["cpu_ms"], 3),
            "note": f"wall {r['wall_ms']:.1f} ms, ratio {r['wall_ms'] / base['wall_ms']:.3f}",
        }
        for key, r in result.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.steps, args.trials)
    base = result["hand"]
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"lightning {pl.__version__}; default model, batch 64, {args.steps} steps x {args.trials} trials"
    )
    print("| loop | ms / step (median) | ratio vs hand loop | CPU ms / step | CPU ratio |")
    print("|---|---|---|---|---|")
    for key, label in LABELS.items():
        r = result[key]
        print(
            f"| {label} | {r['wall_ms']:.1f} | {r['wall_ms'] / base['wall_ms']:.3f} "
            f"| {r['cpu_ms']:.1f} | {r['cpu_ms'] / base['cpu_ms']:.3f} |"
        )


if __name__ == "__main__":
    main()
