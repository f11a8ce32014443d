"""Step time of MultiTaskModule under the Lightning Trainer vs a hand-written PyTorch loop.

Same trunk, heads, data, batch size and optimizer; the hand loop computes the same losses but
logs nothing. Trials alternate between the two so machine load affects both alike; the table
reports medians and their ratio. Run: ``python benchmarks/lightning_overhead.py [--steps N]``.
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


def hand_loop(data: SyntheticSpeechDataModule, steps: int) -> float:
    """Seconds per step of a plain loop: forward, summed cross-entropies, backward, AdamW step."""
    model = _model(data, validate=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = iter(_cycle(data.train_dataloader()))
    for _ in range(3):  # warm-up
        _hand_step(model, optimizer, next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        _hand_step(model, optimizer, next(batches))
    return (time.perf_counter() - start) / steps


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

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def lightning_loop(data: SyntheticSpeechDataModule, steps: int, validate: bool) -> float:
    """Seconds per step of ``Trainer.fit`` with the package's metrics, logging and GRL schedule."""
    timer = _Timer(warmup=3)
    trainer = pl.Trainer(
        max_steps=steps + 3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        callbacks=[GradientReversalSchedule(), timer],
    )
    trainer.fit(_model(data, validate), data)
    return (timer.end - timer.start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    data = SyntheticSpeechDataModule()
    data.setup("fit")
    results: dict[str, list[float]] = {"hand": [], "lightning": [], "lightning_nocheck": []}
    for _ in range(args.trials):
        results["hand"].append(hand_loop(data, args.steps))
        results["lightning"].append(lightning_loop(data, args.steps, validate=True))
        results["lightning_nocheck"].append(lightning_loop(data, args.steps, validate=False))
    base = statistics.median(results["hand"])
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"lightning {pl.__version__}; default model, batch 64, {args.steps} steps x {args.trials} trials"
    )
    print("| loop | ms / step (median) | ratio vs hand loop |")
    print("|---|---|---|")
    labels = {
        "hand": "hand-written PyTorch loop",
        "lightning": "MultiTaskModule + Trainer",
        "lightning_nocheck": "MultiTaskModule + Trainer, validate_inputs=false",
    }
    for key, label in labels.items():
        median = statistics.median(results[key])
        print(f"| {label} | {1000 * median:.1f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
