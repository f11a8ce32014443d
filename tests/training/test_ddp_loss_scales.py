"""Under DDP, each rank's task mean times its scale averages to the one-process global mean."""

from types import SimpleNamespace

import pytest
import torch

from mtl_lightning.losses import labelled_masks, task_loss
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.training.forward import ddp_loss_scales

TASKS = [
    TaskSpec("seed", 2),
    TaskSpec("grade", 3, only_when={"seed": [1]}, class_weights=[1.0, 2.0, 1.0]),
]


def _rank(seed: list[int], grade: list[int], other_local: torch.Tensor | None):
    targets = {"seed": torch.tensor(seed), "grade": torch.tensor(grade)}
    host = SimpleNamespace(
        _trainer=SimpleNamespace(world_size=2),
        tasks=TASKS,
        class_weights={},
        _reduce_sum=lambda t: t + other_local if other_local is not None else t,
    )
    return host, targets, labelled_masks(TASKS, targets)


def test_scales_make_the_rank_average_the_global_mean():
    ranks = [([1, 1, 0, -100], [1, 0, 2, 0]), ([1, 0, 1, 1], [1, -100, 1, 1])]
    # each rank's denominators: labelled seeds 3 / 4; the grade's class weights (class 1: 2.0,
    # the others 1.0) of its labelled rows where seed is 1: 2 + 1 = 3 / 2 + 2 + 2 = 6
    local = [torch.tensor([3.0, 3.0]), torch.tensor([4.0, 6.0])]
    logits = {t.name: torch.randn(8, t.size, generator=torch.Generator().manual_seed(1))
              for t in TASKS}  # fmt: skip
    scaled = {t.name: [] for t in TASKS}
    for r, (seed, grade) in enumerate(ranks):
        host, targets, masks = _rank(seed, grade, local[1 - r])
        scales = ddp_loss_scales(host, targets, masks)
        expected = local[r] * 2 / (local[0] + local[1])
        torch.testing.assert_close(torch.stack([scales[t.name] for t in TASKS]), expected)
        for t in TASKS:
            out = logits[t.name][4 * r : 4 * r + 4]
            scaled[t.name].append(
                scales[t.name] * task_loss(t, out, targets[t.name], masks[t.name])
            )
    # one process on the whole batch of 8
    host, targets, masks = _rank(ranks[0][0] + ranks[1][0], ranks[0][1] + ranks[1][1], None)
    for t in TASKS:
        single = task_loss(t, logits[t.name], targets[t.name], masks[t.name])
        torch.testing.assert_close(torch.stack(scaled[t.name]).mean(), single)


def test_no_scales_in_one_process_and_zero_where_no_rank_has_a_label():
    host, targets, masks = _rank([0, 0], [-100, -100], torch.tensor([1.0, 0.0]))
    scales = ddp_loss_scales(host, targets, masks)
    assert float(scales["seed"]) == pytest.approx(2 * 2 / 3) and float(scales["grade"]) == 0.0
    host._trainer.world_size = 1
    assert ddp_loss_scales(host, targets, masks) is None
