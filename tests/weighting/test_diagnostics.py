"""What the weighting paths log: gradient cosines (adversary included) and the step loss,
each against a value computed independently of the module's gradient code."""

from __future__ import annotations

import copy
import functools
import itertools
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchjd.aggregation import UPGrad

from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import (
    GradientWeighting,
    GradNorm,
    JacobianAggregation,
    StaticWeighting,
)

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")
LAMBDA = 0.7


class _Tiny(nn.Module):
    out_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 8)

    def forward(self, x):
        return torch.tanh(self.layer(x))


class _Ones(GradientWeighting):
    def gramian_weights(self, gramian, losses, jacobian=None):
        return torch.ones(gramian.shape[0])


class _Record(pl.Callback):
    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _tasks(weights=(1.0, 1.0, 1.0)):
    return [
        TaskSpec("a", 3, weight=weights[0]),
        TaskSpec("b", 2, weight=weights[1]),
        TaskSpec("adv", 3, role="adversarial", weight=weights[2]),
    ]


def _batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=gen)
    targets = {
        "a": torch.randint(0, 3, (16,), generator=gen),
        "b": torch.randint(0, 2, (16,), generator=gen),
        "adv": torch.randint(0, 3, (16,), generator=gen),
    }
    return x, targets


def _one_step(weighting, tasks):
    """One training step on one batch; returns the model as it was before it and the metrics."""
    pl.seed_everything(0, verbose=False)
    x, targets = _batch()
    model = MultiTaskModule(
        tasks,
        trunk=_Tiny(),
        head_hidden=4,
        weighting=weighting,
        grad_cos_every_n_steps=1,
        grl_lambda=LAMBDA,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    before = copy.deepcopy(model)
    record = _Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[record],
    )
    trainer.fit(model, DataLoader(TensorTaskDataset(x, targets), batch_size=16))
    return before, record.metrics[0]


def _reference_cosines(model, level):
    """Cosines of the task gradients by plain autograd: the adversary's gradient negated by
    hand (its head applied to the embedding directly, no reversal layer)."""
    x, targets = _batch()
    emb = model.trunk(x)
    wrt = list(model.trunk.parameters()) if level == "shared" else [emb]
    grads = {}
    for name, sign in (("a", 1.0), ("b", 1.0), ("adv", -LAMBDA)):
        loss = F.cross_entropy(model.heads[name](emb), targets[name])
        g = torch.autograd.grad(loss, wrt, retain_graph=True)
        grads[name] = sign * torch.cat([t.flatten() for t in g])
    return {
        f"train/grad_cos/{a}__{b}": float(F.cosine_similarity(grads[a], grads[b], dim=0))
        for a, b in itertools.combinations(["a", "b", "adv"], 2)
    }


@pytest.mark.parametrize(
    ("make", "level"),
    [
        (StaticWeighting, "shared"),  # automatic optimisation
        (lambda: JacobianAggregation(UPGrad()), "shared"),
        (lambda: GradNorm(), "shared"),
        (lambda: JacobianAggregation(UPGrad(), level="rep"), "rep"),
    ],
    ids=["static", "upgrad", "gradnorm", "upgrad_rep"],
)
def test_grad_cos_logs_every_pair_with_the_reversed_adversary(make, level):
    before, metrics = _one_step(make(), _tasks())
    expected = _reference_cosines(before, level)
    logged = {k: v for k, v in metrics.items() if k.startswith("train/grad_cos/")}
    assert set(logged) == set(expected)
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-5), key
    # the reversal really shows: the adversary's reversed gradient is not the plain one
    assert expected["train/grad_cos/a__adv"] != pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("level", ["shared", "rep"])
def test_aggregated_step_loss_includes_the_taskspec_weights(level):
    weights = (2.0, 0.5, 0.3)
    tasks = _tasks(weights)
    plain_before, plain = _one_step(StaticWeighting(), tasks)
    _, manual = _one_step(_Ones(level), tasks)
    x, targets = _batch()
    emb = plain_before.trunk(x)
    reference = sum(
        w * F.cross_entropy(plain_before.heads[n](emb), targets[n])
        for n, w in zip(["a", "b", "adv"], weights, strict=True)
    )
    reference = float(reference.detach())
    assert plain["train/loss_step"] == pytest.approx(reference, rel=1e-5)
    assert manual["train/loss_step"] == pytest.approx(reference, rel=1e-5)
    for t, w in zip(tasks, weights, strict=True):
        assert manual[f"train/weight/{t.name}"] == pytest.approx(w)
