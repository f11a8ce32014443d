"""Step time of every weighting strategy relative to the plain sum, on two models, K = 2 and 5.

Every strategy's ``MultiTaskModule`` trains under its own Lightning ``Trainer`` in one process,
all of them interleaved step by step with the plain sum (``StaticWeighting``): each fit runs in a
worker thread paused at the start of every training step (``SteppedFit`` in
:mod:`benchmarks._weighting_models`), and each round runs one whole Trainer step of every module
in turn (in a random order, new every round), timed with this process's CPU clock (the other fits
wait meanwhile) and the wall clock. A row's ratio is the median CPU time of its steps over the
median of the plain sum's over the same rounds (30 on the CNN, 300 on the dense model, after 3-5
warm-up rounds), so every module sees the same machine load. A second plain-sum module shows the
noise of that ratio: on a shared 2-core machine, where one CNN step's time varies by +-15%, about
+-5% on the CNN and +-3% on the dense model.
The objects that exist when the rounds start are frozen out of Python's garbage collector: with
some 20 models in the process, a full collection otherwise lands in one step (~0.5 s).

Beside them, in the same rounds, hand-written PyTorch loops (no Lightning, no logging, no check)
of the same model and batches: the plain sum and LibMTL's formulas of uncertainty weighting and
random loss weighting, each as a ratio to the plain-sum hand loop, so the package under the
Trainer can be read against the formula by hand (the plain-sum hand loop's note gives the
Trainer's plain sum over it: the Lightning and bookkeeping overhead, as in
:mod:`benchmarks.lightning_overhead`). torchjd's native aggregation path is in
:mod:`benchmarks.gradient_path`.

Models (:mod:`benchmarks._weighting_models`): the default CNN (CNN trunk, 64-unit MLP heads) on
40x64 log-mel-sized inputs, batch 64, each task 5 classes, K = 2 and 5; and the dense five-task
model of ``configs/weighting_aggregation.yaml`` (``DenseTrunk`` on ``SyntheticTabularDataModule``,
batch 64), K = 5 and its first two tasks; AdamW, CPU, no validation, no logger. Targets:
loss-based methods and FAMO with ``update="next_batch"`` <= 1.10x; FAMO's default
``"same_batch"`` (one extra forward pass per step, no backward) and rep-grad aggregation
<= 1.5x; parameter-level aggregation <= (K + 1)x.
Run: ``python benchmarks/weighting.py [--model cnn dense] [--tasks 2 5] [--steps N]`` or, with
the other benchmarks, ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torchjd.aggregation import MGDA, PCGrad, UPGrad

if __package__ in (None, ""):  # run as a script: python benchmarks/weighting.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._weighting_models import Setting, SteppedFit, hand_steps, make_setting  # noqa: E402
from mtl_lightning.weighting import (  # noqa: E402
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
    "static (plain sum), second module": ("noise", StaticWeighting),
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
#: the hand loops' rows: label, and the strategy each formula is read against
HAND = {
    "plain sum": ("hand loop: plain sum", "static (plain sum)"),
    "uncertainty": ("hand loop: LibMTL formula, uncertainty", "uncertainty"),
    "RLW": ("hand loop: LibMTL formula, RLW", "RLW"),
}
#: the settings' prefixes of each model's rows (the CNN's are the plain labels)
MODEL_PREFIX = {"cnn": "", "dense": "dense: "}
Times = dict[str, list[tuple[float, float]]]


def interleave(steps: dict[str, Callable[[], None]], rounds: int, warmup: int) -> Times:
    """Run every step function once per round, in a fresh (seeded) random order each round, so
    no two always run side by side; per function, the CPU and wall seconds of its steps after
    ``warmup`` rounds."""
    names, order = list(steps), random.Random(0)
    times: Times = {name: [] for name in names}
    for i in range(warmup + rounds):
        order.shuffle(names)
        for name in names:
            start = (time.process_time(), time.perf_counter())
            steps[name]()
            end = (time.process_time(), time.perf_counter())
            if i >= warmup:
                times[name].append((end[0] - start[0], end[1] - start[1]))
    return times


def measure(setting: Setting, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """One interleaved run of every strategy's Trainer fit and every hand loop (``hand: ...``):
    per loop, the median CPU and wall ms of its ``steps`` timed steps."""
    fits: dict[str, SteppedFit] = {}
    try:
        for name, (_, make) in STRATEGIES.items():
            module = setting.module(make())
            fits[name] = SteppedFit(module, setting.loader(), warmup + steps)
        loops = {name: fit.step for name, fit in fits.items()}
        loops |= {f"hand: {name}": step for name, step in hand_steps(setting).items()}
        gc.collect()  # then freeze the ~20 models' objects: no full collection lands in a step
        gc.freeze()
        times = interleave(loops, steps, warmup)
    finally:
        gc.unfreeze()
        for fit in fits.values():
            fit.close()
    return {
        name: {
            "cpu_ms": 1000 * statistics.median(t[0] for t in values),
            "wall_ms": 1000 * statistics.median(t[1] for t in values),
        }
        for name, values in times.items()
    }


def _target(kind: str, k: int) -> str:
    fixed = {"baseline": "1", "noise": "1", "loss": "<= 1.10", "extra_forward": "<= 1.5"}
    fixed["rep"] = "<= 1.5"
    return fixed[kind] if kind != "shared" else f"<= {k + 1}"


def rows_of(model: str, k: int, result: dict[str, dict[str, float]]) -> list[dict[str, object]]:
    """The table's rows of one interleaved run: strategies against the Trainer's plain sum,
    hand loops against the plain-sum hand loop."""

    def row(setting: str, r: dict[str, float], base: dict[str, float], note: str) -> dict:
        ratio = r["cpu_ms"] / base["cpu_ms"]
        return {
            "benchmark": "weighting",
            "setting": f"{MODEL_PREFIX[model]}{setting}, K={k}",
            "value": round(r["cpu_ms"], 3 if model == "dense" else 2),
            "unit": "CPU ms/step",
            "ratio": 1.0 if r is base else round(ratio, 3),
            "note": f"{note}; wall {r['wall_ms'] / base['wall_ms']:.3f}x (medians, interleaved)",
        }

    plain, hand = result["static (plain sum)"], result["hand: plain sum"]
    rows = [
        row(name, result[name], plain, f"target {_target(kind, k)}x")
        for name, (kind, _) in STRATEGIES.items()
    ]
    for key, (label, strategy) in HAND.items():
        r = result[f"hand: {key}"]
        if key == "plain sum":
            note = f"hand-loop baseline; the Trainer's plain sum is {plain['cpu_ms'] / r['cpu_ms']:.3f}x it"
        else:
            trainer = result[strategy]["cpu_ms"] / plain["cpu_ms"]
            note = f"vs the plain-sum hand loop; under the Trainer {trainer:.3f}x"
        rows.append(row(label, r, hand, note))
    return rows


def settings(tiny: bool) -> list[tuple[str, int, int, int]]:
    """(model, K, timed steps, warm-up steps) of a run."""
    if tiny:
        return [("cnn", 2, 2, 1), ("dense", 5, 2, 1)]
    return [("cnn", 2, 30, 3), ("cnn", 5, 30, 3), ("dense", 2, 300, 5), ("dense", 5, 300, 5)]


def run(tiny: bool = False) -> list[dict[str, object]]:
    """Rows for ``python -m benchmarks``: median CPU ms per step and the ratio to the plain sum
    in the same interleaved run, per model and K."""
    rows = []
    for model, k, steps, warmup in settings(tiny):
        rows += rows_of(model, k, measure(make_setting(model, k, tiny), steps, warmup))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", nargs="+", choices=sorted(MODEL_PREFIX), default=["cnn", "dense"])
    p.add_argument("--tasks", type=int, nargs="+", default=[2, 5])
    p.add_argument(
        "--steps", type=int, default=None, help="timed rounds (default 30 cnn, 300 dense)"
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: less noise)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| setting | CPU ms/step | ratio | note |")
    print("|---|---|---|---|")
    for model in args.model:
        steps = args.steps or (30 if model == "cnn" else 300)
        for k in args.tasks:
            result = measure(make_setting(model, k), steps, args.warmup)
            for r in rows_of(model, k, result):
                print(f"| {r['setting']} | {r['value']} | {r['ratio']} | {r['note']} |")


if __name__ == "__main__":
    main()
