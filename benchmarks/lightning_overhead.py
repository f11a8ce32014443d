"""Step time of MultiTaskModule under the Lightning Trainer vs a hand-written PyTorch loop.

Same trunk, heads, data, batch size and optimizer; the hand loop computes the same losses but
logs nothing, reads the package's training loader (the same data path as the Trainer) and steps
the same AdamW implementation as the module (on the CPU ``fused``,
:func:`mtl_lightning.optim.fused_on_cpu`), so the ratio is the step's bookkeeping. A second hand
loop is the one a user would write: a plain ``DataLoader`` of the same set, whose
``default_collate`` fetches and stacks the samples one by one, and torch's default AdamW (on the
CPU its for-loop implementation): what the package's batched fetch
(:mod:`mtl_lightning.data.collate`) and optimizer choice save against it. A third is the first
run as in a process that never imported Lightning
(:func:`benchmarks._interleave.outside_lightning`): Lightning's import makes torch check for
CUDA through NVML, which every ``Optimizer.step`` asks and which, where NVML cannot be loaded,
costs a failed library load per step. The loops run interleaved in one process, step by step:
at the start of every Lightning step a callback runs one hand-loop step (its own copy of the model, optimizer and data
iterator). A Lightning step is timed from the end of that hand step to the start of the next
batch, so it holds the Trainer's loop, hooks, logging and data fetching; a hand step holds its
own data fetching. On a shared machine whose speed drifts by 10% within seconds, two adjacent
steps see the same machine: the ratio of their sums is steady to about 1%, where separate runs
of each loop gave ratios from 1.02 to 1.08 on the same host. Times are this process's CPU time
(one torch thread: the work done, little disturbed by other processes) and wall time.
Two models: the default CNN (a ~80-140 ms step here) and the dense five-task model of
``configs/weighting_aggregation.yaml`` (``DenseTrunk`` on ``SyntheticTabularDataModule``, a
~2-3 ms step, where the per-step bookkeeping weighs as much as the model).
Run: ``python -m benchmarks.lightning_overhead [--model cnn|dense] [--steps N] [--trials N]``
or, with the other benchmarks, ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmarks._interleave import cycle, fit_interleaved, outside_lightning, to_device
from mtl_lightning import GradientReversalSchedule, MultiTaskModule, SyntheticSpeechDataModule
from mtl_lightning.data import MultiTaskDataModule, SyntheticTabularDataModule
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.optim import fused_on_cpu

warnings.filterwarnings("ignore")


def _model(data: MultiTaskDataModule, validate: bool) -> MultiTaskModule:
    torch.manual_seed(0)
    if isinstance(data, SyntheticTabularDataModule):  # configs/weighting_aggregation.yaml's
        trunk = DenseTrunk(data.n_features, divisors=[4, 12, 20], dropout=0.1)
        return MultiTaskModule(data.tasks, trunk=trunk, head_hidden=16, validate_inputs=validate)
    return MultiTaskModule(data.tasks, validate_inputs=validate)


def make_data(model: str, tiny: bool = False) -> MultiTaskDataModule:
    """``cnn``: the default synthetic speech; ``dense``: the five-task table, batch 64."""
    if model == "dense":
        return SyntheticTabularDataModule(n_train=256 if tiny else 4096, n_eval=64)
    if tiny:
        return SyntheticSpeechDataModule(per_pair=2, per_pair_eval=1, n_mels=16, frames=16)
    return SyntheticSpeechDataModule()


def _hand_step(model, optimizer, batch) -> None:
    outputs = model(batch["features"])
    loss = sum(F.cross_entropy(outputs[t], y) for t, y in batch["targets"].items())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _plain_loader(data: MultiTaskDataModule) -> DataLoader:
    """The training set in a plain ``DataLoader`` (shuffled, torch's ``default_collate``: the
    samples fetched and stacked one by one), as a hand-written loop would read it."""
    loader = data.train_dataloader()
    generator = torch.Generator().manual_seed(0)
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, shuffle=True, generator=generator
    )


def _hand_contender(
    data: MultiTaskDataModule, loader: DataLoader, device: torch.device, fast: bool = True
) -> Callable[[], None]:
    """One hand-loop step (its own model copy and optimizer) on the next batch of ``loader``;
    the module's AdamW implementation with ``fast``, torch's default without."""
    hand = _model(data, validate=False).train().to(device)
    optimizer = torch.optim.AdamW(hand.parameters(), lr=1e-3)
    if fast:
        optimizer = fused_on_cpu(optimizer)
    batches = cycle(loader)
    return lambda: _hand_step(hand, optimizer, to_device(next(batches), device))


def interleaved(
    data: MultiTaskDataModule, steps: int, validate: bool, accelerator: str = "cpu"
) -> dict[str, float]:
    """One ``Trainer.fit`` of ``steps`` timed steps (after 3 warm-up steps) with the package's
    metrics, logging and GRL schedule, each step paired with a hand-loop step. Returns the CPU
    and wall ms per step of each and the ratios of their sums over the paired steps."""
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    contenders = {
        "hand": _hand_contender(data, data.train_dataloader(), device),
        "plain": _hand_contender(data, _plain_loader(data), device, fast=False),
        "outside": outside_lightning(_hand_contender(data, data.train_dataloader(), device)),
    }
    timed = fit_interleaved(
        _model(data, validate),
        data,
        contenders,
        steps,
        baseline="hand",
        callbacks=[GradientReversalSchedule()],
        accelerator=accelerator,
    )
    result = {}
    for kind in ("cpu", "wall"):
        for name in contenders:
            result[f"{name}_{kind}_ms"] = timed[f"{name}_{kind}_ms"]
        result[f"plain_{kind}_ratio"] = timed[f"plain_{kind}_ratio"]
        result[f"outside_{kind}_ratio"] = timed[f"outside_{kind}_ratio"]
        result[f"lightning_{kind}_ms"] = timed[f"lightning_{kind}_ms"]
        result[f"{kind}_ratio"] = timed[f"lightning_{kind}_ratio"]
    return result


class BareModule(pl.LightningModule):
    """What Lightning alone costs: the same model, loss and AdamW in a LightningModule whose
    ``training_step`` returns the summed loss and does nothing else (no metrics, logging or
    checks)."""

    def __init__(self, data: MultiTaskDataModule) -> None:
        super().__init__()
        self.model = _model(data, validate=False)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.model(batch["features"])
        return sum(F.cross_entropy(outputs[t], y) for t, y in batch["targets"].items())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return fused_on_cpu(torch.optim.AdamW(self.parameters(), lr=1e-3))


def interleaved_bare(data: MultiTaskDataModule, steps: int) -> dict[str, float]:
    """:func:`interleaved` for :class:`BareModule` (no GRL schedule: it has no reversal)."""
    hand = _model(data, validate=False).train()
    optimizer = fused_on_cpu(torch.optim.AdamW(hand.parameters(), lr=1e-3))
    batches = cycle(data.train_dataloader())
    step = {"hand": lambda: _hand_step(hand, optimizer, next(batches))}
    timed = fit_interleaved(BareModule(data), data, step, steps, baseline="hand")
    result = {k: timed[k] for k in ("hand_cpu_ms", "hand_wall_ms", "lightning_cpu_ms")}
    result["lightning_wall_ms"] = timed["lightning_wall_ms"]
    for kind in ("cpu", "wall"):
        result[f"{kind}_ratio"] = timed[f"lightning_{kind}_ratio"]
    return result


LABELS = {
    "hand": "hand-written PyTorch loop",
    "plain": "hand-written PyTorch loop as a user writes it: plain DataLoader, default AdamW",
    "outside": "hand-written PyTorch loop, in a process without Lightning's NVML-based CUDA check",
    "bare": "bare LightningModule + Trainer (the summed loss only)",
    "lightning": "MultiTaskModule + Trainer",
    "lightning_nocheck": "MultiTaskModule + Trainer, validate_inputs=false",
}


def measure(
    steps: int, trials: int, data: MultiTaskDataModule | None = None, accelerator: str = "cpu"
) -> dict[str, dict[str, float]]:
    """Per loop: medians over ``trials`` fits of the CPU and wall ms per step and of the ratio
    to the hand-loop steps interleaved with them (the hand row: over every fit)."""
    if data is None:
        data = make_data("cnn")
    data.setup("fit")
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "lightning": [], "lightning_nocheck": []}
    for _ in range(trials):
        if accelerator == "cpu":
            runs["bare"].append(interleaved_bare(data, steps))
        runs["lightning"].append(interleaved(data, steps, True, accelerator))
        runs["lightning_nocheck"].append(interleaved(data, steps, False, accelerator))
    runs = {k: v for k, v in runs.items() if v}
    fits = [fit for values in runs.values() for fit in values]
    result = {
        "hand": {
            "cpu_ms": statistics.median(f["hand_cpu_ms"] for f in fits),
            "wall_ms": statistics.median(f["hand_wall_ms"] for f in fits),
            "cpu_ratio": 1.0,
            "wall_ratio": 1.0,
        }
    }
    for name in ("plain", "outside"):
        paired = [fit for fit in fits if f"{name}_cpu_ms" in fit]  # beside the module's fits
        if paired:
            result[name] = {
                f"{kind}_{unit}": statistics.median(f[f"{name}_{kind}_{unit}"] for f in paired)
                for kind in ("cpu", "wall")
                for unit in ("ms", "ratio")
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


#: the settings' prefixes of each model's rows (the CNN's are the plain labels)
MODEL_PREFIX = {"cnn": "", "dense": "dense five-task: "}


def run(tiny: bool = False) -> list[dict[str, object]]:
    """Rows for ``python -m benchmarks``: CPU ms per step and the ratio to the hand loop, for
    the CNN and the dense five-task model."""
    rows = []
    for model, prefix in MODEL_PREFIX.items():
        steps, trials = (2, 1) if tiny else ((60, 5) if model == "cnn" else (300, 5))
        result = measure(steps=steps, trials=trials, data=make_data(model, tiny))
        rows += [
            {
                "benchmark": "lightning_overhead",
                "setting": prefix + LABELS[key],
                "value": round(r["cpu_ms"], 3 if model == "dense" else 2),
                "unit": "CPU ms/step",
                "ratio": round(r["cpu_ratio"], 3),
                "note": f"interleaved steps; wall {r['wall_ms']:.2f} ms, ratio {r['wall_ratio']:.3f}",
            }
            for key, r in result.items()
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(MODEL_PREFIX), default="cnn")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.steps, args.trials, make_data(args.model))
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"lightning {pl.__version__}; {args.model} model, batch 64, {args.steps} interleaved steps x "
        f"{args.trials} fits per loop (medians over fits)"
    )
    print("| loop | ms / step | ratio vs hand loop | CPU ms / step | CPU ratio |")
    print("|---|---|---|---|---|")
    for key, r in result.items():
        label = LABELS[key]
        print(
            f"| {label} | {r['wall_ms']:.1f} | {r['wall_ratio']:.3f} "
            f"| {r['cpu_ms']:.1f} | {r['cpu_ratio']:.3f} |"
        )


if __name__ == "__main__":
    main()
