"""`TaskAffinity`: TAG lookahead inter-task affinity, averaged per epoch, logged and saved."""

from __future__ import annotations

import json
import os
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from mtl_lightning.affinity import (
    affinity_from_losses,
    cosine_matrix,
    heatmap_image,
    lookahead_losses,
)


def _mean_over_ranks(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


class TaskAffinity(pl.Callback):
    """Every ``every_n_steps`` training steps, measure the TAG lookahead affinity of the main tasks.

    Before the optimizer step of the batch, for each main task ``i``: take a virtual step of the
    shared (trunk) parameters along task ``i``'s gradient, ``theta' = theta - lr * g_i``, and
    evaluate every main task's loss on the same batch; ``Z[i, j] = 1 - L_j(theta') / L_j(theta)``.
    All forwards go through ``torch.func.functional_call`` with *copies* of the buffers and a
    forked RNG (one dropout mask for every evaluation), so parameters, BatchNorm running
    statistics, the optimizer state and the global RNG stream are untouched. Under DDP the
    gradients and losses are averaged across ranks before use.

    At each training epoch end the epoch's mean matrix is logged as ``affinity/{i}_to_{j}``, drawn
    as a heatmap image (TensorBoard; rows = source, columns = target, red helps, blue hurts), and
    every epoch so far is written to ``{trainer.log_dir}/affinity.json`` with the gradient cosine
    matrix (rank zero).

    Args:
        every_n_steps: Measure on every ``n``-th training batch.
        lr: Step size of the virtual step (default: the optimizer's current learning rate).
        output_file: Name of the JSON file in the run directory.
        log_image: Add the heatmap image to TensorBoard.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        lr: float | None = None,
        output_file: str = "affinity.json",
        log_image: bool = True,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if lr is not None and not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.every_n_steps = every_n_steps
        self.lr = lr
        self.output_file = output_file
        self.log_image = log_image
        self.tasks: list[str] = []
        self._sum: Tensor | None = None
        self._cos_sum: Tensor | None = None
        self._count = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ measurement
    def measure(
        self, pl_module: Any, batch: Any, lr: float, seed: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Affinity ``[T, T]`` and gradient cosine ``[T, T]`` of the main tasks on one batch.

        ``seed`` fixes the dropout mask shared by every evaluation (the global RNG is restored).
        """
        specs = [t for t in pl_module.tasks if not t.adversarial]
        features, targets = batch["features"], batch["targets"]
        shared = {f"trunk.{k}": v for k, v in pl_module.trunk.named_parameters()}
        buffers = dict(pl_module.named_buffers())
        device = features.device

        def losses(params: dict[str, Tensor]) -> Tensor:
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                copies = {k: v.clone() for k, v in buffers.items()}  # BN stats stay untouched
                out = torch.func.functional_call(pl_module, {**params, **copies}, (features,))
            return torch.stack(
                [pl_module.task_loss(t, out[t.name], targets[t.name]) for t in specs]
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
        flat = _mean_over_ranks(flat)  # [T, P]: the gradient of the global batch
        per_task = [
            {n: part.view_as(shared[n]) for n, part in zip(names, row.split(sizes), strict=True)}
            for row in flat
        ]
        detached = {k: v.detach() for k, v in shared.items()}
        after = lookahead_losses(losses, detached, per_task, lr)
        before = _mean_over_ranks(before.detach())
        after = _mean_over_ranks(after)
        return affinity_from_losses(before, after), cosine_matrix(flat)

    # ------------------------------------------------------------------ hooks
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps != 0 or trainer.sanity_checking:
            return
        self.tasks = [t.name for t in pl_module.tasks if not t.adversarial]  # type: ignore[attr-defined]
        lr = self.lr if self.lr is not None else float(trainer.optimizers[0].param_groups[0]["lr"])
        z, cos = self.measure(pl_module, batch, lr, seed=trainer.global_step)
        self._sum = z.double().cpu() if self._sum is None else self._sum + z.double().cpu()
        self._cos_sum = (
            cos.double().cpu() if self._cos_sum is None else self._cos_sum + cos.double().cpu()
        )
        self._count += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._count == 0 or self._sum is None or self._cos_sum is None:
            return
        z = (self._sum / self._count).tolist()
        cos = (self._cos_sum / self._count).tolist()
        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "measurements": self._count,
            "tasks": list(self.tasks),
            "affinity": z,
            "cosine": cos,
        }
        self.history.append(record)
        for i, source in enumerate(self.tasks):
            for j, target in enumerate(self.tasks):
                pl_module.log(
                    f"affinity/{source}_to_{target}",
                    z[i][j],
                    on_epoch=True,
                    on_step=False,
                    sync_dist=False,
                )
        # trainer.log_dir broadcasts under DDP: every rank asks, only rank zero writes
        self._write(trainer, record, trainer.log_dir)
        self._sum, self._cos_sum, self._count = None, None, 0

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, record: dict[str, Any], log_dir: str | None) -> None:
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            path = os.path.join(log_dir, self.output_file)
            with open(path + ".tmp", "w") as f:
                json.dump({"tasks": record["tasks"], "epochs": self.history}, f, indent=1)
            os.replace(path + ".tmp", path)
        if self.log_image:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    image = heatmap_image(torch.tensor(record["affinity"]))
                    logger.experiment.add_image("affinity/heatmap", image, record["epoch"])

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "sum": None if self._sum is None else self._sum.tolist(),
            "cos_sum": None if self._cos_sum is None else self._cos_sum.tolist(),
            "count": self._count,
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tasks = list(state_dict["tasks"])
        s, c = state_dict["sum"], state_dict["cos_sum"]
        self._sum = None if s is None else torch.tensor(s, dtype=torch.float64)
        self._cos_sum = None if c is None else torch.tensor(c, dtype=torch.float64)
        self._count = int(state_dict["count"])
        self.history = list(state_dict["history"])
