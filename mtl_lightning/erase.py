"""``python -m mtl_lightning erase``: linear concept erasure (LEACE) on a trained model.

The eraser of each named adversarial task is fitted on the frozen trunk's embeddings of the
whole training split (eval mode, exactly what ``test``, ``predict`` and ``probe`` compute), so
on that data no linear classifier of the erased embedding beats a constant prediction. The
main heads and the task's attackers are then retrained on the erased embeddings, a new
checkpoint is written beside the old one (``erased.ckpt``) and the run's ``summary.json`` gets
an ``erase`` section (validation results, fresh probes and the checkpoint's path).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtl_lightning.adversary import LinearEraser
from mtl_lightning.adversary.config import as_config, config_dict
from mtl_lightning.metrics.confusion import confusion_counts
from mtl_lightning.optim import fused_on_cpu
from mtl_lightning.probe import (
    balanced_accuracy_present,
    embed_dataset,
    format_results,
    load_run,
    probe_embeddings,
)
from mtl_lightning.summary import update_summary


def erasable_tasks(model: Any, tasks: Sequence[str] | None) -> list[str]:
    """The tasks to erase: those named, else every task with an attacker ensemble."""
    names = list(tasks) if tasks else list(model.adversaries)
    bad = [n for n in names if n not in model.adversaries]
    if bad or not names:
        raise ValueError(
            f"cannot erase {bad or 'nothing'}: erase needs adversarial classification tasks "
            f"with an attacker ensemble (model.adversary_config); this model has "
            f"{list(model.adversaries) or 'none'}"
        )
    return names


@torch.no_grad()
def _raw_embeddings(model: Any, loader: Any, tasks: Sequence[str]) -> tuple[Tensor, dict]:
    """Trunk outputs before any eraser (eval mode) and the labels, for the whole split."""
    erasers = {n: a.eraser for n, a in model.adversaries.items()}
    for adversary in model.adversaries.values():
        adversary.eraser = None
    try:
        return embed_dataset(model, loader, tasks)
    finally:
        for name, eraser in erasers.items():
            model.adversaries[name].eraser = eraser


def fit_erasers(model: Any, loader: Any, names: Sequence[str]) -> None:
    """Fit (or refit) the erasers of ``names`` in the adversaries' order, each on the
    embeddings the previous ones produce, and record ``erase: true`` in the hyperparameters."""
    all_tasks = [t.name for t in model.tasks]
    z, labels = _raw_embeddings(model, loader, all_tasks)
    z = z.double()
    per_task = dict(model.hparams.get("adversaries") or {})
    for name, adversary in model.adversaries.items():
        if name in names:
            eraser = LinearEraser(z.shape[1], adversary.task.size).double()
            keep = labels[name] >= 0
            eraser.update(z[keep], labels[name][keep])
            eraser.fit()
            adversary.eraser = eraser.float()
            config = as_config(per_task.get(name) or model.hparams["adversary_config"])
            per_task[name] = config_dict(config) | {"erase": True}
        if adversary.eraser is not None:
            z = adversary.eraser.double()(z)
            adversary.eraser.float()
    model.hparams["adversaries"] = per_task


def retrain_heads(
    model: Any, z: Tensor, labels: dict[str, Tensor], epochs: int = 30, seed: int = 0
) -> None:
    """Fine-tune every main head (mini-batches of 64, Adam) and retrain every attacker (full
    batch, 10 steps per epoch of the heads) on the frozen embeddings ``z``."""
    torch.manual_seed(seed)
    heads = [t for t in model.tasks if t.name in model.heads and not t.adversarial]
    params = [p for t in heads for p in model.heads[t.name].parameters()]
    optimizer = fused_on_cpu(torch.optim.Adam(params, lr=1e-3))
    masks = model.labelled_masks(labels)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(z.shape[0]).split(64):
            optimizer.zero_grad()
            loss = sum(
                model.task_loss(
                    t, model.heads[t.name](z[idx]), labels[t.name][idx], masks[t.name][idx]
                )
                for t in heads
            )
            loss.backward()
            optimizer.step()
    for name, adversary in model.adversaries.items():
        keep = masks[name]
        ensemble = adversary.attackers
        memory, steps = ensemble.memory, ensemble.steps
        ensemble.memory, ensemble.steps = 0, 10 * max(epochs, 1)  # the whole split, each step
        try:
            ensemble.best_response(z[keep], labels[name][keep].long())
        finally:
            ensemble.memory, ensemble.steps = memory, steps
    model.eval()


@torch.no_grad()
def evaluate(model: Any, z: Tensor, labels: dict[str, Tensor]) -> dict[str, float]:
    """Validation balanced accuracy of every classification task (the best attacker's for an
    attacker ensemble, which then answers for the task); NaN without labelled samples."""
    masks = model.labelled_masks(labels)
    out: dict[str, float] = {}
    for t in model.tasks:
        if not t.is_classification or t.name not in model.heads and t.name not in model.adversaries:
            continue
        keep = masks[t.name]
        if not bool(keep.any()):
            out[t.name] = float("nan")
            continue
        target = labels[t.name][keep].long()
        if t.name in model.adversaries:
            adversary = model.adversaries[t.name]
            logits = adversary.logits(z[keep])
            scores = [
                float(balanced_accuracy_present(confusion_counts(lg, target, t.size)))
                for lg in logits
            ]
            best = max(range(len(scores)), key=lambda i: scores[i])
            adversary.best.fill_(best)
            out[t.name] = scores[best]
        else:
            preds = model.heads[t.name](z[keep])
            out[t.name] = float(balanced_accuracy_present(confusion_counts(preds, target, t.size)))
    return out


def erase_checkpoint(
    ckpt_path: str | Path,
    tasks: Sequence[str] | None = None,
    epochs: int = 30,
    output: str | Path | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Fit the erasers, retrain the heads, write the new checkpoint and the summary section."""
    ckpt_path = Path(ckpt_path).resolve()
    model, data, run_dir = load_run(ckpt_path)
    names = erasable_tasks(model, tasks)
    all_tasks = [t.name for t in model.tasks]
    fit_erasers(model, data.train_dataloader(), names)
    train_z, train_y = embed_dataset(model, data.train_dataloader(), all_tasks)
    val_z, val_y = embed_dataset(model, data.val_dataloader(), all_tasks)
    retrain_heads(model, train_z, train_y, epochs)
    results = evaluate(model, val_z, val_y)
    probes = []
    for name in names:
        tr, va = train_y[name] >= 0, val_y[name] >= 0
        size = model.adversaries[name].task.size
        probes += probe_embeddings(
            train_z[tr],
            train_y[name][tr].long(),
            val_z[va],
            val_y[name][va].long(),
            name,
            size,
            n_boot=n_boot,
        )
    output = Path(output) if output else ckpt_path.with_name("erased.ckpt")
    checkpoint = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = model.state_dict()
    checkpoint["hyper_parameters"] = dict(model.hparams)
    torch.save(checkpoint, output)
    section = {
        "source_checkpoint": str(ckpt_path),
        "checkpoint": str(output),
        "erased_tasks": names,
        "val_balanced_acc": results,
        "probe": [asdict(r) | {"verdict": r.verdict} for r in probes],
    }
    update_summary(run_dir / "summary.json", "erase", section)
    return section | {"probe_results": probes}


def main(argv: Sequence[str]) -> None:
    """``python -m mtl_lightning erase --ckpt_path X [--tasks speaker] [--epochs 30]``."""
    parser = argparse.ArgumentParser(
        prog="python -m mtl_lightning erase",
        description="Fit LEACE erasers on a checkpoint's frozen trunk, retrain its heads on the "
        "erased embeddings and write a new checkpoint and a summary.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint inside a run directory")
    parser.add_argument("--tasks", nargs="*", default=None, help="tasks to erase (default: all)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of head retraining")
    parser.add_argument("--output", default=None, help="new checkpoint (default: erased.ckpt)")
    parser.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(list(argv))
    if args.epochs < 0:
        parser.error(f"--epochs must be >= 0, got {args.epochs}")
    out = erase_checkpoint(args.ckpt_path, args.tasks, args.epochs, args.output, args.n_boot)
    print("val balanced accuracy on the erased embeddings:")
    for name, value in out["val_balanced_acc"].items():
        print(f"  {name:<10} {value:.3f}")
    print(format_results(out["probe_results"]))
    print(f"checkpoint written to {out['checkpoint']}")
