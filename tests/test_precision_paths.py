"""Numerics that bf16-mixed (on GPUs, docs/performance.md) would round, and device-count changes on
resume: each checked on CPU, where the same autocast code paths run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtl_lightning.callbacks import rng_state
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.nn.trunks import masked_time_mean
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.training.packing import gram_matrix

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def test_regression_loss_keeps_float32_targets_under_bf16_autocast():
    task = TaskSpec("y", 1, kind="regression")
    target = torch.tensor([37.3, 257.0, 1000.7])
    layer = torch.nn.Linear(2, 1)
    x = torch.randn(3, 2)
    with torch.autocast(**BF16):
        output = layer(x)
        assert output.dtype == torch.bfloat16
        loss = MultiTaskModule.task_loss(task, output, target)
    exact = F.mse_loss(output.float(), target[:, None])
    rounded = F.mse_loss(output.float(), target[:, None].bfloat16().float())
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(exact), rel=1e-6)
    assert float(loss) != pytest.approx(float(rounded), rel=1e-6)  # the bug this guards against


def test_gram_matrix_is_float32_inside_autocast():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 5000, generator=g)
    with torch.autocast(**BF16):
        gram = gram_matrix(rows)
        plain = rows @ rows.T
    exact = rows.double() @ rows.double().T
    assert gram.dtype == torch.float32 and plain.dtype == torch.bfloat16
    assert torch.allclose(gram.double(), exact, rtol=1e-5)
    assert not torch.allclose(plain.double(), exact, rtol=1e-5)


def test_masked_time_mean_is_rounded_once_in_bf16():
    """Whole-utterance pooling under bf16: the mean over 257..299 frames is the exact mean
    rounded once to bf16 (a bf16 sum and frame count would each be rounded first)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (43, 2, 1, 300), generator=g).bfloat16()  # exact in bf16
    lengths = torch.arange(257, 300)
    got = masked_time_mean(x, lengths)
    exact = torch.stack(
        [x[i, ..., :n].double().mean(-1, keepdim=True) for i, n in enumerate(lengths)]
    )
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, exact.bfloat16())
    valid = (torch.arange(300) < lengths[:, None]).bfloat16()
    naive = (x * valid[:, None, None, :]).sum(-1, keepdim=True) / lengths.bfloat16()[
        :, None, None, None
    ]
    assert not torch.equal(naive, exact.bfloat16())  # what the float32 path avoids


def test_cuda_rng_restore_with_fewer_visible_gpus(monkeypatch):
    """A checkpoint from a machine with more GPUs restores the states of the GPUs present."""
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: calls.append(index))
    monkeypatch.setattr(
        torch.cuda, "set_rng_state_all", lambda states: pytest.fail("indexes every saved GPU")
    )
    state = rng_state.collect_rng_state()
    state["cuda"] = [torch.zeros(8, dtype=torch.uint8)] * 4  # saved on a 4-GPU machine
    rng_state.restore_rng_state(state)
    assert calls == [0]


def test_culprit_search_leaves_batchnorm_statistics_and_rng_alone():
    """Finding which task a non-finite gradient comes from runs the batch again; that re-run
    must not move BatchNorm's running statistics or the random stream."""
    torch.manual_seed(0)
    tasks = [TaskSpec("a", 2), TaskSpec("b", 3)]
    model = MultiTaskModule(
        tasks, trunk=DenseTrunk(6, norm="batch", widths=[1, 1, 1]), head_hidden=0
    ).train()
    batch = {
        "features": torch.randn(8, 6),
        "targets": {"a": torch.randint(0, 2, (8,)), "b": torch.randint(0, 3, (8,))},
    }
    model._progress.start_batch(batch, 0)
    before = {k: v.clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state()
    assert model._tasks_with_nonfinite_gradients() == []
    assert torch.equal(torch.get_rng_state(), rng)
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name
