"""Shared-level UPGrad: the package's gradient path against torchjd's own and a bare hand loop.

One ``Trainer.fit`` of ``MultiTaskModule(weighting=JacobianAggregation(UPGrad()))`` (the
package: per-task gradients, the Jacobian of the trunk's parameters, its checks, weights and
logging), each step interleaved with one step of (:mod:`benchmarks._interleave`):

- ``torchjd mtl_backward``: torchjd's native path on a copy of the model,
  ``mtl_backward(losses, features=embedding)`` then ``jac_to_grad(trunk params, UPGrad())``;
- ``hand K-pass``: the same algorithm written bare: one ``autograd.grad`` per task over the
  trunk's parameters, the stacked Jacobian aggregated by ``UPGrad()``, the heads' gradients of
  the summed loss, written into ``.grad``;
- ``plain sum``: a hand loop of the summed loss (what one step costs without aggregation);
- ``torchjd mtl_backward under the Trainer``: torchjd's path in a bare ``LightningModule``
  (manual optimisation, nothing logged or checked) fitted by its own ``Trainer``, one whole
  Trainer step per step (:class:`benchmarks._weighting_models.SteppedFit`): the package
  against it is the gradient path and the bookkeeping, with the Trainer's loop on both sides.

Both models of :mod:`benchmarks.lightning_overhead` (the CNN and the dense five-task model) and
K = 2 and 5 tasks. Ratios are to ``torchjd mtl_backward`` in the same fit.
Run: ``python -m benchmarks.gradient_path [--steps N] [--trials N]``.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchjd.aggregation import UPGrad
from torchjd.autojac import jac_to_grad, mtl_backward

from benchmarks._interleave import cycle, fit_interleaved, to_device
from benchmarks._weighting_models import SteppedFit
from benchmarks.lightning_overhead import make_data
from mtl_lightning import MultiTaskModule
from mtl_lightning.data import MultiTaskDataModule, SyntheticTabularDataModule
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.optim import fused_on_cpu
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import JacobianAggregation

warnings.filterwarnings("ignore")

TRAINER = "torchjd mtl_backward under the Trainer"
CONTENDERS = ("torchjd mtl_backward", "hand K-pass", "plain sum", TRAINER)


def _model(tasks: list[TaskSpec], dense: bool, aggregate: bool) -> MultiTaskModule:
    torch.manual_seed(0)
    weighting = JacobianAggregation(UPGrad(), level="shared") if aggregate else None
    if dense:
        trunk = DenseTrunk(120, divisors=[4, 12, 20], dropout=0.1)
        return MultiTaskModule(tasks, trunk=trunk, head_hidden=16, weighting=weighting)
    return MultiTaskModule(tasks, weighting=weighting)


def _losses(model: MultiTaskModule, batch: dict) -> tuple[Tensor, list[Tensor]]:
    embedding = model.trunk(batch["features"])
    losses = [F.cross_entropy(model.heads[t](embedding), y) for t, y in batch["targets"].items()]
    return embedding, losses


class TorchjdModule(pl.LightningModule):
    """torchjd's native path as a bare ``LightningModule``: ``mtl_backward`` on the model's
    task losses, ``jac_to_grad`` of its trunk with UPGrad, the module's AdamW; no metric, log,
    check or hook of the package."""

    def __init__(self, tasks: list[TaskSpec], dense: bool) -> None:
        super().__init__()
        self.model = _model(tasks, dense, aggregate=False)
        self.names = [t.name for t in tasks]
        self.shared = [p for p in self.model.trunk.parameters() if p.requires_grad]
        self.upgrad = UPGrad()
        self.automatic_optimization = False

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        batch = {**batch, "targets": {t: batch["targets"][t] for t in self.names}}
        embedding, losses = _losses(self.model, batch)
        mtl_backward(losses, features=embedding)
        jac_to_grad(self.shared, self.upgrad)
        optimizer.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return fused_on_cpu(torch.optim.AdamW(self.model.parameters(), lr=1e-3))


def _steps(
    tasks: list[TaskSpec], data: MultiTaskDataModule, device: torch.device
) -> dict[str, Callable[[], None]]:
    """One step function per contender but the Trainer's, each on its own model copy,
    optimizer and batches."""
    dense = isinstance(data, SyntheticTabularDataModule)
    names = [t.name for t in tasks]
    upgrad = UPGrad()

    def contender(kind: str) -> Callable[[], None]:
        model = _model(tasks, dense, aggregate=False).train().to(device)
        optimizer = fused_on_cpu(torch.optim.AdamW(model.parameters(), lr=1e-3))  # as the module
        shared = [p for p in model.trunk.parameters() if p.requires_grad]
        heads = [p for t in names for p in model.heads[t].parameters()]
        batches = cycle(data.train_dataloader())

        def step() -> None:
            batch = to_device(next(batches), device)
            batch = {**batch, "targets": {t: batch["targets"][t] for t in names}}
            optimizer.zero_grad(set_to_none=True)
            embedding, losses = _losses(model, batch)
            if kind == "torchjd mtl_backward":
                mtl_backward(losses, features=embedding)
                jac_to_grad(shared, upgrad)
            elif kind == "hand K-pass":
                rows = [torch.autograd.grad(loss, shared, retain_graph=True) for loss in losses]
                jac = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])
                update = upgrad(jac)
                head_grads = torch.autograd.grad(sum(losses), heads)
                offset = 0
                for p in shared:
                    p.grad = update[offset : offset + p.numel()].view_as(p)
                    offset += p.numel()
                for p, g in zip(heads, head_grads, strict=True):
                    p.grad = g
            else:
                sum(losses).backward()
            optimizer.step()

        return step

    return {kind: contender(kind) for kind in CONTENDERS if kind != TRAINER}


def measure(
    model: str, k: int, steps: int, trials: int, tiny: bool = False, accelerator: str = "cpu"
) -> dict[str, dict]:
    """Per loop, medians over ``trials`` fits: ms per step and the ratio to torchjd's path."""
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    if model == "dense" and k == 2:  # the first two tasks of the five-task table
        n = 256 if tiny else 4096
        data = SyntheticTabularDataModule(num_classes=(3, 2), groups=((0, 1),), conflicting=(),
                                          n_train=n, n_eval=64)  # fmt: skip
    else:
        data = make_data(model, tiny)
    data.setup("fit")
    tasks = [TaskSpec(t.name, t.size) for t in data.tasks]  # all main tasks
    if len(tasks) != k:
        raise ValueError(f"the {model} model's data has {len(tasks)} tasks, not {k}")
    fits = []
    for _ in range(trials):
        package = _model(tasks, model == "dense", aggregate=True)
        contenders = _steps(tasks, data, device)
        # called warm-up + steps + 1 times (fit_interleaved's default warm-up: 3)
        trainer_fit = SteppedFit(TorchjdModule(tasks, model == "dense"),
                                 data.train_dataloader(), steps + 5, accelerator)  # fmt: skip
        contenders[TRAINER] = trainer_fit.step
        baseline = "torchjd mtl_backward"
        try:
            fits.append(
                fit_interleaved(package, data, contenders, steps, baseline, accelerator=accelerator)
            )
        finally:
            trainer_fit.close()
    return {
        name: {
            f"{kind}_{unit}": statistics.median(f[f"{name}_{kind}_{unit}"] for f in fits)
            for kind in ("cpu", "wall")
            for unit in ("ms", "ratio")
        }
        for name in ("lightning", *CONTENDERS)
    }


LABELS = {"lightning": "MultiTaskModule + Trainer (UPGrad, shared)", **{c: c for c in CONTENDERS}}


def run(tiny: bool = False) -> list[dict[str, object]]:
    """Rows for ``python -m benchmarks``: CPU ms per step and the ratio to torchjd's path."""
    rows = []
    settings = [("dense", 2), ("dense", 5), ("cnn", 2)]
    for model, k in settings[:1] if tiny else settings:
        steps, trials = (2, 1) if tiny else ((200, 5) if model == "dense" else (30, 3))
        result = measure(model, k, steps, trials, tiny)
        for name, r in result.items():
            rows.append(
                {
                    "benchmark": "gradient_path",
                    "setting": f"{model} K={k}: {LABELS[name]}",
                    "value": round(r["cpu_ms"], 3),
                    "unit": "CPU ms/step",
                    "ratio": round(r["cpu_ratio"], 3),
                    "note": f"vs torchjd mtl_backward, interleaved; wall ratio {r['wall_ratio']:.3f}",
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | K | loop | CPU ms / step | ratio vs torchjd |")
    print("|---|---|---|---|---|")
    for model, k in [("dense", 2), ("dense", 5), ("cnn", 2)]:
        steps = args.steps if model == "dense" else max(10, args.steps // 10)
        for name, r in measure(model, k, steps, args.trials).items():
            print(f"| {model} | {k} | {LABELS[name]} | {r['cpu_ms']:.3f} | {r['cpu_ratio']:.3f} |")


if __name__ == "__main__":
    main()
