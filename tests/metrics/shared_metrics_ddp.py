"""Two gloo processes update the per-task metrics on their halves of the same batches; each
saves the computed (synced) values, its local states and the rank-summed checkpoint states
(run by ``test_shared_metrics_ddp.py``).

Usage: python shared_metrics_ddp.py OUT_DIR PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtl_lightning.metrics import task_metrics, training_counts, update_task_metrics
from mtl_lightning.metrics.rank_states import sum_metric_states
from mtl_lightning.tasks import TaskSpec

TASKS = [TaskSpec("c", 4), TaskSpec("m", 3, kind="multilabel")]
#: the compute order on every rank: shared members before and after their sources
ORDER = {"c": ["f1", "acc", "balanced_acc"], "m": ["f1_macro", "exact_match", "f1_micro"]}


def batches(task: TaskSpec, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """The global batches of ``task`` (the same in every process)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (32, 10, 6):
        output = torch.randn(n, task.size, generator=g)
        if task.is_classification:
            target = torch.randint(0, task.size - 1, (n,), generator=g)  # a class never a target
        else:
            target = (torch.rand(n, task.size, generator=g) < 0.4).float()
        out.append((output, target))
    return out


def holder() -> nn.ModuleDict:
    """Every task's metrics (persistent, as the training ones) and the training-label counts."""
    modules = nn.ModuleDict({t.name: task_metrics(t) for t in TASKS})
    for collection in modules.values():
        collection.persistent(True)
    modules["counts_c"] = training_counts(TASKS[0])
    return modules


def fill(modules: nn.ModuleDict, rank: int = 0, world: int = 1) -> None:
    """Update with this rank's share (every ``world``-th sample from ``rank``)."""
    for task in TASKS:
        counts = modules["counts_c"] if task.is_classification else None
        for output, target in batches(task):
            update_task_metrics(
                task, modules[task.name], output[rank::world], target[rank::world], counts
            )


def computed(modules: nn.ModuleDict) -> dict[str, dict[str, float]]:
    """Each task's values, computed in :data:`ORDER`."""
    return {
        name: {k: float(modules[name][k].compute()) for k in keys} for name, keys in ORDER.items()
    }


def _reduce_sum(t: Tensor) -> Tensor:
    t = t.clone()
    dist.all_reduce(t)
    return t


def _worker(rank: int, out: str, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        modules = holder()
        fill(modules, rank, 2)
        local = {k: v.clone() for k, v in modules.state_dict().items()}
        values = computed(modules)
        after = modules.state_dict()  # the local sums again once computed
        unsynced = all(torch.equal(after[k], v) for k, v in local.items())
        saved = modules.state_dict()
        sum_metric_states(modules, saved, _reduce_sum)
        result = {"values": values, "local": local, "unsynced": unsynced, "saved": saved}
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(_worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
