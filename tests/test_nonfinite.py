"""A NaN/inf task loss or gradient stops the run naming task, step and batch, or is skipped and counted."""

import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.module import MultiTaskModule, NonFiniteError
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import JacobianAggregation

warnings.filterwarnings("ignore", ".*does not have many workers.*")


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class PoisonTrunk(nn.Module):
    """Linear trunk that, from `poison_at` calls on, yields inf features or NaN gradients."""

    out_features = 4

    def __init__(self, mode: str, poison_at: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.mode, self.poison_at, self.calls = mode, poison_at, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        out = self.linear(x)
        if self.training and self.calls > self.poison_at:
            out = out * float("inf") if self.mode == "loss" else _NaNGrad.apply(out)
        return out


def _fit(mode: str, nonfinite: str, weighting=None, poison_at: int = 2, edit=None):
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    ds = TensorTaskDataset(
        torch.randn(40, 3, generator=g),
        {
            "a": torch.randint(0, 2, (40,), generator=g),
            "b": torch.randint(0, 3, (40,), generator=g),
        },
    )
    model = MultiTaskModule(
        [TaskSpec("a", 2), TaskSpec("b", 3)],
        trunk=PoisonTrunk(mode, poison_at),
        head_hidden=0,
        nonfinite=nonfinite,
        weighting=weighting,
    )
    if edit is not None:
        edit(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(ds, batch_size=8))
    return model, before


@pytest.mark.parametrize("weighting", [None, JacobianAggregation()], ids=["auto", "aggregation"])
def test_nonfinite_loss_raises_naming_task_step_and_batch(weighting):
    with pytest.raises(NonFiniteError, match=r"step 2, batch 2: non-finite loss for task\(s\) 'a'"):
        _fit("loss", "raise", weighting)


def test_nonfinite_gradient_raises_naming_step_batch_tasks_and_parameters():
    with pytest.raises(
        NonFiniteError,
        match=r"step 2, batch 2: non-finite gradient from task\(s\) 'a', 'b' in \['trunk\.linear",
    ):
        _fit("grad", "raise")


class _NaNGradLayer(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _NaNGrad.apply(x)


def test_nonfinite_gradient_names_only_the_task_it_comes_from():
    def poison_b(model: MultiTaskModule) -> None:
        model.heads["b"] = nn.Sequential(_NaNGradLayer(), model.heads["b"])

    with pytest.raises(
        NonFiniteError, match=r"step 0, batch 0: non-finite gradient from task\(s\) 'b' in"
    ):
        _fit("none", "raise", poison_at=10**6, edit=poison_b)


@pytest.mark.parametrize("mode", ["loss", "grad"])
@pytest.mark.parametrize("weighting", [None, JacobianAggregation()], ids=["auto", "aggregation"])
def test_skip_policy_skips_and_counts_without_touching_the_weights(mode, weighting):
    with pytest.warns(UserWarning, match="skipped"):
        model, _ = _fit(mode, "skip", weighting)
    # 5 batches, the first 2 clean: 3 skipped steps, and the parameters stay finite
    assert int(model.skipped_steps) == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skipped_steps_leave_parameters_unchanged():
    model, before = _fit("loss", "skip", poison_at=0)
    assert int(model.skipped_steps) == 5
    for key, value in model.state_dict().items():
        if key.startswith(("trunk", "heads")):
            assert torch.equal(value, before[key]), key


def test_all_finite_fast_path_and_overflow_fallback(monkeypatch):
    """A finite total norm proves every element finite; an overflowing norm of finite values
    must not be reported as non-finite (the gradient check uses this on every step)."""
    from mtl_lightning.nonfinite import all_finite

    huge = [torch.full((4,), 3e38), torch.ones(3)]  # 2-norm overflows to inf, values are finite
    cases = [
        ([torch.randn(5), torch.randn(2, 3)], True),
        (huge, True),
        ([torch.ones(2), torch.tensor([0.0, float("nan")])], False),
        ([torch.tensor([-float("inf")]), torch.ones(2)], False),
    ]
    for tensors, expected in cases:
        assert all_finite(tensors) is expected
    monkeypatch.delattr(torch.nn.utils, "get_total_norm")  # torch < 2.6
    for tensors, expected in cases:
        assert all_finite(tensors) is expected


def test_finite_gradients_agrees_with_an_elementwise_check_and_changes_no_value(monkeypatch):
    """The per-step gradient check (AMP's fused kernel, unscaling by 1) answers as an
    element-by-element test does, on mixed dtypes, huge finite values, subnormals and signed
    zeros, and leaves every gradient bit for bit as it was; without the kernel it falls back."""
    from mtl_lightning.nonfinite import finite_gradients

    generator = torch.Generator().manual_seed(0)
    subnormal = torch.tensor([1e-45, -1e-40, -0.0, 3e38])
    cases = [[torch.randn(5, generator=generator), subnormal.clone()]]
    for i in range(40):
        dtypes = [torch.float32, torch.bfloat16, torch.float64][: 1 + i % 3]
        tensors = [torch.randn(3, 4, generator=generator).to(d) for d in dtypes]
        tensors.append(torch.randn(4, 3, generator=generator).t())  # not contiguous
        if i % 4:
            bad = tensors[i % len(tensors)]
            value = [float("nan"), float("inf"), -float("inf")][i % 3]
            bad[i % bad.shape[0], i % bad.shape[1]] = value
        cases.append(tensors)
    for tensors in cases:
        expected = all(bool(torch.isfinite(t).all()) for t in tensors)
        before = [t.clone() for t in tensors]
        assert finite_gradients(tensors) is expected
        for t, b in zip(tensors, before, strict=True):
            assert torch.equal(t.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    assert finite_gradients([]) is True

    def missing(*args):
        raise NotImplementedError("no kernel")

    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", missing)
    for tensors in cases[:8]:
        assert finite_gradients(tensors) is all(bool(torch.isfinite(t).all()) for t in tensors)
