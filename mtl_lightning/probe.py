"""Post-hoc leakage probes: fresh classifiers on the frozen shared representation.

An adversary at chance during training does not prove the representation is free of the
attribute (Elazar & Goldberg, 2018): the trunk may only have fooled that one head. A probe trains
new classifiers (linear and a small MLP) on the frozen embeddings of the training split and
reports their balanced accuracy on the validation split with a bootstrap confidence interval.

Balanced accuracy here is macro recall over the classes *present in the held-out targets*
(sklearn's ``balanced_accuracy_score``): a class with no held-out sample has no recall, even if
the probe predicts it, so chance is ``1 / (number of classes present)``, the ``chance`` reported.
(The training metrics follow torchmetrics instead, where a predicted but absent class counts as a
recall of 0; on a validation split missing classes that would put a blind probe below chance.)
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtl_lightning.metrics.confusion import confusion_counts
from mtl_lightning.optim import fused_on_cpu
from mtl_lightning.summary import update_summary


@dataclass
class ProbeResult:
    """Held-out balanced accuracy of one probe, with a bootstrap interval and chance level.

    ``chance`` is ``1 / classes_present``: the classes present in the held-out targets.
    """

    task: str
    probe: str
    balanced_acc: float
    ci_low: float
    ci_high: float
    chance: float
    classes_present: int

    @property
    def verdict(self) -> str:
        """``leaks`` when the whole interval is above chance, otherwise ``no leak detected``."""
        return "leaks" if self.ci_low > self.chance else "no leak detected"


def _probe_model(kind: str, width: int, num_classes: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(width, num_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, num_classes))
    raise ValueError(f"unknown probe {kind!r}; use 'linear' or 'mlp'")


def balanced_accuracy_present(confmats: Tensor) -> Tensor:
    """Macro recall over the classes present in the targets (rows with samples) of each
    ``[..., K, K]`` confusion matrix (row: target), in float64; 0 for an empty matrix.

    A class absent from the targets is left out even when it is predicted, as in sklearn's
    ``balanced_accuracy_score``; so a constant prediction scores ``1 / K_present``.

    Example:
        >>> # targets 0, 0, 1, 1 predicted 0, 2, 1, 1: recalls 1/2 and 1; class 2 has no sample
        >>> balanced_accuracy_present(torch.tensor([[1, 0, 1], [0, 2, 0], [0, 0, 0]]))
        tensor(0.7500, dtype=torch.float64)
    """
    support = confmats.sum(dim=-1).double()
    present = support > 0
    recall = confmats.diagonal(dim1=-2, dim2=-1).double() / support.clamp_min(1.0)
    count = present.sum(dim=-1)
    return (recall * present).sum(dim=-1) / count.clamp_min(1)


def bootstrap_balanced_accuracy(
    preds: Tensor, target: Tensor, num_classes: int, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Balanced accuracy and its 95% percentile-bootstrap interval over resampled samples.

    Each figure (the point estimate and every resample's) is
    :func:`balanced_accuracy_present` of its own targets.

    Example:
        >>> y = torch.arange(4).repeat(25)
        >>> acc, low, high = bootstrap_balanced_accuracy(y, y, 4, n_boot=50)
        >>> acc, low, high
        (1.0, 1.0, 1.0)
    """
    k = num_classes
    cells = (target.reshape(-1).long() * k + preds.reshape(-1).long()).cpu()
    point = float(balanced_accuracy_present(confusion_counts(preds.cpu(), target.cpu(), k)))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cells.numel(), (n_boot, cells.numel()), generator=g)
    # one confusion matrix per resample, in one bincount
    flat = (torch.arange(n_boot)[:, None] * (k * k) + cells[idx]).flatten()
    confmats = torch.bincount(flat, minlength=n_boot * k * k).view(n_boot, k, k)
    stats = balanced_accuracy_present(confmats)
    low, high = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=stats.dtype)).tolist()
    return point, low, high


def fit_probe(
    train_z: Tensor,
    train_y: Tensor,
    val_z: Tensor,
    val_y: Tensor,
    num_classes: int,
    kind: str = "linear",
    steps: int = 300,
    lr: float = 1e-2,
    seed: int = 0,
) -> Tensor:
    """Train a fresh classifier on standardised ``train_z`` (full batch, Adam); return val preds.

    Example:
        >>> z = torch.randn(200, 3); y = (z[:, 0] > 0).long()
        >>> preds = fit_probe(z, y, z, y, 2, steps=100)
        >>> bool((preds == y).float().mean() > 0.9)
        True
    """
    torch.manual_seed(seed)
    mean, std = train_z.mean(0), train_z.std(0).clamp_min(1e-6)
    model = _probe_model(kind, train_z.shape[1], num_classes)
    optimizer = fused_on_cpu(torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4))
    x = (train_z - mean) / std
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return model((val_z - mean) / std).argmax(-1)


def probe_embeddings(
    train_z: Tensor,
    train_y: Tensor,
    val_z: Tensor,
    val_y: Tensor,
    task: str,
    num_classes: int,
    kinds: Sequence[str] = ("linear", "mlp"),
    n_boot: int = 1000,
) -> list[ProbeResult]:
    """Probe one task with each kind of classifier.

    Balanced accuracy is macro recall over the classes present in ``val_y``, and chance is
    ``1 / (number of those classes)`` (not ``1 / num_classes`` when the held-out split lacks
    some classes).
    """
    present = int(torch.unique(val_y).numel())
    if present == 0:
        raise ValueError(f"task {task!r}: no labelled held-out samples to probe")
    results = []
    for kind in kinds:
        preds = fit_probe(train_z, train_y, val_z, val_y, num_classes, kind)
        acc, low, high = bootstrap_balanced_accuracy(preds, val_y, num_classes, n_boot)
        results.append(ProbeResult(task, kind, acc, low, high, 1.0 / present, present))
    return results


def probe_task_names(model: Any, tasks: Sequence[str] | None = None) -> list[str]:
    """The tasks to probe: those named, else the model's adversarial tasks; all classification.

    Example:
        >>> from mtl_lightning import MultiTaskModule, TaskSpec
        >>> m = MultiTaskModule([TaskSpec("emotion", 5), TaskSpec("speaker", 11, role="adversarial")])
        >>> probe_task_names(m), probe_task_names(m, ["emotion"])
        (['speaker'], ['emotion'])
    """
    specs = {t.name: t for t in model.tasks}
    names = list(tasks) if tasks else [t.name for t in model.tasks if t.adversarial]
    unknown = [n for n in names if n not in specs or not specs[n].is_classification]
    if unknown or not names:
        raise ValueError(
            f"cannot probe {unknown or 'nothing'}: name classification tasks of the model "
            f"({[t.name for t in model.tasks if t.is_classification]}) with --tasks"
        )
    return names


def _full_loader(loader: Any) -> DataLoader:
    """A plain in-order loader over the whole dataset behind ``loader`` (no DDP shard).

    A ``DataLoader``'s ``collate_fn`` is kept: whole utterances of different lengths, for
    example, are padded per batch (with a ``mask``) by the datamodule's collate function.
    """
    if not isinstance(loader, DataLoader):
        return DataLoader(loader, batch_size=256, shuffle=False)
    batch_size = loader.batch_size or 256
    return DataLoader(
        loader.dataset, batch_size=batch_size, shuffle=False, collate_fn=loader.collate_fn
    )


@torch.no_grad()
def embed_dataset(
    model: Any, loader: Any, tasks: Sequence[str]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Frozen shared representation (on CPU) and labels of every sample behind ``loader``.

    ``loader`` is a ``DataLoader`` (its whole dataset is read in order, not only this DDP
    rank's shard) or a dataset of ``{"features", "targets"[, "mask"]}`` samples. The model is
    put in eval mode for the pass and restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    zs, ys = [], {t: [] for t in tasks}
    try:
        for batch in _full_loader(loader):
            features = batch["features"].to(device)
            mask = batch.get("mask")
            z = model.embed(features, None if mask is None else mask.to(device))
            zs.append(z.float().cpu())
            for t in tasks:
                ys[t].append(batch["targets"][t].cpu())
    finally:
        model.train(was_training)
    return torch.cat(zs), {t: torch.cat(v) for t, v in ys.items()}


def probe_model(
    model: Any,
    train_loader: Any,
    val_loader: Any,
    tasks: Sequence[str] | None = None,
    n_boot: int = 1000,
    kinds: Sequence[str] = ("linear", "mlp"),
    progress: Callable[[str], None] | None = None,
) -> list[ProbeResult]:
    """Probe a (trained) ``MultiTaskModule``'s frozen trunk for the named (default: adversarial)
    tasks: fresh classifiers trained on ``train_loader``'s embeddings, scored on ``val_loader``'s.

    Samples whose label is missing (negative, e.g. ``-100``) are left out for that task.
    ``progress`` receives a line before each stage (the CLI prints them).
    """
    say = progress or (lambda message: None)
    names = probe_task_names(model, tasks)
    specs = {t.name: t for t in model.tasks}
    start = time.perf_counter()
    say("probe: embedding the training and validation splits with the frozen trunk")
    train_z, train_y = embed_dataset(model, train_loader, names)
    val_z, val_y = embed_dataset(model, val_loader, names)
    say(f"probe: {len(train_z)} + {len(val_z)} embeddings in {time.perf_counter() - start:.1f} s")
    results = []
    for name in names:
        tr, va = train_y[name] >= 0, val_y[name] >= 0
        say(
            f"probe: {name}: training {' and '.join(kinds)} probes on {int(tr.sum())} samples, "
            f"scoring {int(va.sum())} ({n_boot} bootstrap resamples)"
        )
        results += probe_embeddings(
            train_z[tr],
            train_y[name][tr].long(),
            val_z[va],
            val_y[name][va].long(),
            name,
            specs[name].size,
            kinds=kinds,
            n_boot=n_boot,
        )
    return results


def write_probe_results(
    results: Sequence[ProbeResult],
    summary_path: str | Path | None,
    writer: Any | None = None,
    step: int | None = None,
) -> None:
    """Write ``results`` to ``summary.json``'s ``probe`` section and, given a TensorBoard
    ``SummaryWriter``, as ``probe/{task}/{probe}/balanced_acc|ci_low|ci_high|chance`` scalars."""
    if summary_path is not None:
        update_summary(summary_path, "probe", [asdict(r) | {"verdict": r.verdict} for r in results])
    if writer is not None:
        for r in results:
            for key in ("balanced_acc", "ci_low", "ci_high", "chance"):
                writer.add_scalar(f"probe/{r.task}/{r.probe}/{key}", getattr(r, key), step)


def load_run(ckpt_path: str | Path) -> tuple[Any, Any, Path]:
    """A run's model (eval mode, CPU) and datamodule (set up for ``fit``, with the
    checkpoint's datamodule state), rebuilt from the checkpoint and the run's ``config.yaml``;
    and the run directory."""
    from mtl_lightning.module import MultiTaskModule
    from mtl_lightning.run_config import check_importable

    ckpt_path = Path(ckpt_path).resolve()
    run_dir = ckpt_path.parent.parent
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise FileNotFoundError(
            f"{config_file} not found: the checkpoint must sit in a run directory's checkpoints/"
        )
    check_importable(config_file)  # a user's own trunk or datamodule module, run elsewhere
    data_cfg = yaml.safe_load(config_file.read_text())["data"]
    module_name, _, class_name = data_cfg["class_path"].rpartition(".")
    data = getattr(importlib.import_module(module_name), class_name)(
        **data_cfg.get("init_args", {})
    )
    model = MultiTaskModule.load_from_checkpoint(str(ckpt_path), map_location="cpu").eval()
    data.setup("fit")
    # the datamodule's own checkpoint state (e.g. label vocabulary, feature statistics), as
    # Lightning restores it for validate/test/predict --ckpt_path
    state = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    if type(data).__qualname__ in state and hasattr(data, "load_state_dict"):
        data.load_state_dict(state[type(data).__qualname__])
    return model, data, run_dir


def probe_checkpoint(
    ckpt_path: str | Path,
    tasks: Sequence[str] | None = None,
    n_boot: int = 1000,
    progress: Callable[[str], None] | None = None,
) -> list[ProbeResult]:
    """Probe a run's checkpoint; data is rebuilt from the run's ``config.yaml``.

    Results are printed by the CLI, written to the run's ``summary.json`` (``probe`` section)
    and logged to TensorBoard as ``probe/{task}/{linear|mlp}/balanced_acc`` (and ``chance``,
    ``ci_low``, ``ci_high``).
    """
    if progress is not None:
        progress(f"probe: loading {ckpt_path} and its run's data")
    model, data, run_dir = load_run(ckpt_path)
    probe_task_names(model, tasks)
    results = probe_model(
        model, data.train_dataloader(), data.val_dataloader(), tasks, n_boot=n_boot,
        progress=progress,
    )  # fmt: skip
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir)) as writer:
        write_probe_results(results, run_dir / "summary.json", writer)
    return results


def format_results(results: Sequence[ProbeResult]) -> str:
    """Plain-text table of probe results."""
    lines = ["task     probe   val balanced acc  95% CI          chance  verdict"]
    for r in results:
        ci = f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
        lines.append(
            f"{r.task:<8} {r.probe:<7} {r.balanced_acc:>16.3f}  {ci:<15} "
            f"{r.chance:>6.3f}  {r.verdict}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    """``python -m mtl_lightning probe --ckpt_path X [--tasks speaker ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m mtl_lightning probe",
        description="Train fresh linear and MLP probes on a checkpoint's frozen representation.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint inside a run directory")
    parser.add_argument(
        "--tasks", nargs="*", default=None, help="tasks to probe (default: the adversarial tasks)"
    )
    parser.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(list(argv))
    results = probe_checkpoint(
        args.ckpt_path, args.tasks, args.n_boot, progress=lambda m: print(m, flush=True)
    )
    print(format_results(results))
    if not math.isfinite(sum(r.balanced_acc for r in results)):
        raise SystemExit("probe produced non-finite results")
