"""`TaskAffinity`: TAG lookahead inter-task affinity, averaged per epoch, logged and saved."""

from __future__ import annotations

import json
import os
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

from mtl_lightning.affinity import (
    affinity_from_losses,
    cosine_matrix,
    heatmap_image,
    lookahead_losses,
)
from mtl_lightning.affinity.figure import affinity_figure_image, nice_scale, off_diagonal_max
from mtl_lightning.callbacks.collective_order import log_replicated


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum_over_ranks(t: Tensor) -> Tensor:
    if _distributed():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _labelled_mean_over_ranks(values: Tensor, labelled: Tensor, total: Tensor) -> Tensor:
    """Per-task means over the labelled samples of the global batch.

    ``values`` are this rank's means over its ``labelled`` samples (broadcast against
    ``values``); ``total`` is the count over all ranks. In one process the values are returned
    unchanged (bit for bit).
    """
    if not _distributed():
        return values
    return _sum_over_ranks(values * labelled) / total.clamp_min(1)


class TaskAffinity(pl.Callback):
    """Every ``every_n_steps`` training steps, measure the TAG lookahead affinity of the main tasks.

    Before the optimizer step of the batch, for each main task ``i``: take a virtual step of the
    shared (trunk) parameters along task ``i``'s gradient, ``theta' = theta - lr * g_i``, and
    evaluate every main task's loss on the same batch; ``Z[i, j] = 1 - L_j(theta') / L_j(theta)``.
    All forwards go through ``torch.func.functional_call`` with *copies* of the buffers and a
    forked RNG (one dropout mask for every evaluation), so parameters, BatchNorm running
    statistics, the optimizer state and the global RNG stream are untouched. Each task's loss
    and gradient cover its labelled samples only (missing labels, ``only_when``); a pair whose
    source or target has no labelled sample in the batch is skipped, and each pair's epoch mean
    is over the batches it was measured on (never-measured pairs are ``null`` in the file and not
    logged). Under DDP the gradients and losses are the means over the labelled samples of all
    ranks, as one process would compute them on the global batch.

    At each training epoch end the epoch's mean matrix is logged as ``affinity/{i}_to_{j}``, drawn
    as the image ``affinity/heatmap`` at the global step (TensorBoard; rows = source, columns =
    target, task names on both axes, values in the cells, red helps, blue hurts on a colour
    scale fixed for the whole run, self-affinity grey, unmeasured pairs hatched ``n/a``; with
    matplotlib, else an unlabelled grid), and every epoch so far is written to
    ``{trainer.log_dir}/affinity.json`` with the gradient cosine matrix (rank zero).

    Args:
        every_n_steps: Measure on every ``n``-th training batch.
        lr: Step size of the virtual step (default: the optimizer's current learning rate).
        output_file: Name of the JSON file in the run directory.
        log_image: Add the heatmap image to TensorBoard.
        image_scale: The affinity drawn in full colour (the same for every epoch, so epochs
            compare; beyond it colours saturate). Default: fixed at the first logged epoch, as
            its largest off-diagonal value rounded up to 1, 2 or 5 times a power of ten.

    Raises:
        ValueError: ``every_n_steps < 1``, ``lr <= 0`` or ``image_scale <= 0``.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        lr: float | None = None,
        output_file: str = "affinity.json",
        log_image: bool = True,
        image_scale: float | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if lr is not None and not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if image_scale is not None and not image_scale > 0:
            raise ValueError(f"image_scale must be > 0, got {image_scale}")
        self.every_n_steps = every_n_steps
        self.lr = lr
        self.output_file = output_file
        self.log_image = log_image
        self.image_scale = image_scale  # set at the first image when None; kept by checkpoints
        self._warned_no_matplotlib = False
        self.tasks: list[str] = []
        self._sum: Tensor | None = None
        self._cos_sum: Tensor | None = None
        self._pair_count: Tensor | None = None  # [T, T]: batches each pair was measured on
        self._count = 0  # batches measured
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ measurement
    def measure(
        self, pl_module: Any, batch: Any, lr: float, seed: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Affinity ``[T, T]`` and gradient cosine ``[T, T]`` of the main tasks on one batch.

        ``seed`` fixes the dropout mask shared by every evaluation (the global RNG is restored).
        Losses and gradients cover each task's labelled samples only (missing labels and
        ``only_when`` conditions applied); a pair whose source or target task has no labelled
        sample in the (global) batch is NaN.
        """
        z, cos, measured = self.measure_pairs(pl_module, batch, lr, seed)
        nan = torch.full_like(z, float("nan"))
        return torch.where(measured, z, nan), torch.where(measured, cos, nan)

    def measure_pairs(
        self, pl_module: Any, batch: Any, lr: float, seed: int = 0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`measure` as ``(affinity, cosine, measured)``; ``measured`` is a ``[T, T]`` bool.

        ``measured[i, j]``: both source ``i`` and target ``j`` have labelled samples in the batch
        (summed over DDP ranks); the other entries of ``affinity`` and ``cosine`` are meaningless.
        Under DDP each task's losses and gradients are the means over the labelled samples of
        all ranks (each rank's mean weighted by its labelled count), as one process would compute
        them on the global batch.
        """
        specs = [t for t in pl_module.tasks if not t.adversarial]
        features, targets = batch["features"], batch["targets"]
        masks = pl_module.labelled_masks(targets)
        shared = {f"trunk.{k}": v for k, v in pl_module.trunk.named_parameters()}
        buffers = dict(pl_module.named_buffers())
        device = features.device
        labelled = torch.stack([masks[t.name].sum() for t in specs]).to(features.dtype)
        total = _sum_over_ranks(labelled)  # [T]: labelled samples of each task, all ranks

        def losses(params: dict[str, Tensor]) -> Tensor:
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                copies = {k: v.clone() for k, v in buffers.items()}  # BN stats stay untouched
                out = torch.func.functional_call(pl_module, {**params, **copies}, (features,))
            return torch.stack(
                [pl_module.task_loss(t, out[t.name], targets[t.name], masks[t.name]) for t in specs]
            )

        names = list(shared)
        sizes = [shared[n].numel() for n in names]
        with torch.enable_grad():
            before = losses(shared)
            grads = [
                torch.autograd.grad(
                    before[i], list(shared.values()), retain_graph=True, materialize_grads=True
                )
                for i in range(len(specs))
            ]
        flat = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in grads]).detach()
        # [T, P]: the gradient of the global batch
        flat = _labelled_mean_over_ranks(flat, labelled[:, None], total[:, None])
        per_task = [
            {n: part.view_as(shared[n]) for n, part in zip(names, row.split(sizes), strict=True)}
            for row in flat
        ]
        detached = {k: v.detach() for k, v in shared.items()}
        after = lookahead_losses(losses, detached, per_task, lr)
        before = _labelled_mean_over_ranks(before.detach(), labelled, total)
        after = _labelled_mean_over_ranks(after, labelled[None, :], total[None, :])
        has_labels = total > 0
        measured = has_labels[:, None] & has_labels[None, :]
        return affinity_from_losses(before, after), cosine_matrix(flat), measured

    # ------------------------------------------------------------------ hooks
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps != 0 or trainer.sanity_checking:
            return
        self.tasks = [t.name for t in pl_module.tasks if not t.adversarial]  # type: ignore[attr-defined]
        lr = self.lr if self.lr is not None else float(trainer.optimizers[0].param_groups[0]["lr"])
        z, cos, measured = self.measure_pairs(pl_module, batch, lr, seed=trainer.global_step)
        zero = torch.zeros((), dtype=torch.float64)
        measured = measured.cpu()
        z = torch.where(measured, z.double().cpu(), zero)  # unmeasured pairs add nothing
        cos = torch.where(measured, cos.double().cpu(), zero)
        self._sum = z if self._sum is None else self._sum + z
        self._cos_sum = cos if self._cos_sum is None else self._cos_sum + cos
        counts = measured.long()
        self._pair_count = counts if self._pair_count is None else self._pair_count + counts
        self._count += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._count == 0 or self._sum is None or self._cos_sum is None:
            return
        pairs = self._pair_count if self._pair_count is not None else torch.tensor(self._count)
        pairs = pairs.expand_as(self._sum)

        def mean(total: Tensor) -> list[list[float | None]]:
            # a pair never measured this epoch (a task without labels in every batch): null
            return [
                [float(s / n) if n > 0 else None for s, n in zip(srow, nrow, strict=True)]
                for srow, nrow in zip(total.tolist(), pairs.tolist(), strict=True)
            ]

        z, cos = mean(self._sum), mean(self._cos_sum)
        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "measurements": self._count,
            "pair_measurements": pairs.tolist(),
            "tasks": list(self.tasks),
            "affinity": z,
            "cosine": cos,
        }
        self.history.append(record)
        for i, source in enumerate(self.tasks):
            for j, target in enumerate(self.tasks):
                value = z[i][j]
                if value is None:
                    continue
                # from losses reduced over ranks: identical on every rank
                log_replicated(pl_module, f"affinity/{source}_to_{target}", value)
        # trainer.log_dir broadcasts under DDP: every rank asks, only rank zero writes
        self._write(trainer, record, trainer.log_dir)
        self._sum, self._cos_sum, self._pair_count, self._count = None, None, None, 0

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, record: dict[str, Any], log_dir: str | None) -> None:
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            path = os.path.join(log_dir, self.output_file)
            with open(path + ".tmp", "w") as f:
                json.dump({"tasks": record["tasks"], "epochs": self.history}, f, indent=1)
            os.replace(path + ".tmp", path)
        if self.log_image:
            self._log_image(trainer, record)

    def _log_image(self, trainer: pl.Trainer, record: dict[str, Any]) -> None:
        """The labelled heatmap at the global step (the step of the affinity scalars)."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        if self.image_scale is None:
            self.image_scale = nice_scale(off_diagonal_max(record["affinity"]))
        title = f"affinity, epoch {record['epoch']} (step {record['step']})"
        image = affinity_figure_image(record["affinity"], record["tasks"], self.image_scale, title)
        if image is None:  # no matplotlib: the unlabelled grid, unmeasured pairs drawn as 0
            if not self._warned_no_matplotlib:
                rank_zero_warn(
                    "TaskAffinity: matplotlib is not installed, so affinity/heatmap is an "
                    "unlabelled colour grid (pip install matplotlib for names and values)"
                )
                self._warned_no_matplotlib = True
            z = [[0.0 if v is None else v for v in row] for row in record["affinity"]]
            image = heatmap_image(torch.tensor(z), scale=self.image_scale)
        for logger in loggers:
            logger.experiment.add_image("affinity/heatmap", image, record["step"])

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "sum": None if self._sum is None else self._sum.tolist(),
            "cos_sum": None if self._cos_sum is None else self._cos_sum.tolist(),
            "count": self._count,
            "pair_count": None if self._pair_count is None else self._pair_count.tolist(),
            "history": list(self.history),
            "image_scale": self.image_scale,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tasks = list(state_dict["tasks"])
        s, c = state_dict["sum"], state_dict["cos_sum"]
        self._sum = None if s is None else torch.tensor(s, dtype=torch.float64)
        self._cos_sum = None if c is None else torch.tensor(c, dtype=torch.float64)
        self._count = int(state_dict["count"])
        pairs = state_dict.get("pair_count")  # absent in older checkpoints: every pair counted
        if pairs is None and self._sum is not None:
            pairs = torch.full(self._sum.shape, self._count).tolist()
        self._pair_count = None if pairs is None else torch.tensor(pairs, dtype=torch.long)
        self.history = list(state_dict["history"])
        if self.image_scale is None:  # the scale of the run's earlier images
            self.image_scale = state_dict.get("image_scale")
