"""LossMean against torchmetrics' MeanMetric (its fast path and its fallback)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchmetrics import MeanMetric

from mtl_lightning.metrics import LossMean


def _feed(metric, updates):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MeanMetric warns about the NaN it leaves out
        for value, weight in updates:
            metric.update(value, weight)
    return metric


def test_matches_mean_metric_on_scalars_tensors_and_nan():
    g = torch.Generator().manual_seed(0)
    updates = [
        (torch.rand((), generator=g) * 5, int(w)) for w in torch.randint(1, 65, (20,), generator=g)
    ]
    updates += [
        (torch.tensor(float("nan")), 8),  # left out, as MeanMetric does
        (torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])),  # general path
        (torch.tensor(2.5), None),
        (torch.tensor(1.5, dtype=torch.float64), 3.0),
    ]
    ours, theirs = _feed(LossMean(), updates), _feed(MeanMetric(), updates)
    assert torch.allclose(ours.mean_value, theirs.mean_value, rtol=1e-6)
    assert torch.equal(ours.weight, theirs.weight)
    assert float(ours.compute()) == pytest.approx(float(theirs.compute()), rel=1e-6)


def test_hand_computed_weighted_mean_and_same_checkpoint_keys():
    metric = _feed(LossMean(), [(torch.tensor(1.0), 1), (torch.tensor(4.0), 3)])
    assert float(metric.compute()) == pytest.approx((1.0 + 12.0) / 4)
    metric.persistent(True)
    reference = MeanMetric()
    reference.persistent(True)
    assert metric.state_dict().keys() == reference.state_dict().keys()


def test_nan_loss_warns_and_is_left_out_like_mean_metric():
    metric = LossMean()
    metric.update(torch.tensor(2.0), 1)
    with pytest.warns(UserWarning, match="nan"):
        metric.update(torch.tensor(float("nan")), 5)
    assert float(metric.compute()) == 2.0
