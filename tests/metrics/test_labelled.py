"""Labelled-sample counts from the metric states (``{stage}/{task}/n``)."""

import math
import warnings

import torch

from mtl_lightning import TaskSpec
from mtl_lightning.metrics import labelled_counts, task_metrics


def test_labelled_counts_read_each_kind_of_metric_state():
    tasks = [
        TaskSpec("c", 3),
        TaskSpec("m", 2, kind="multilabel"),
        TaskSpec("r", 1, kind="regression"),
    ]
    cols = {t.name: task_metrics(t) for t in tasks}
    cols["c"].update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    cols["m"].update(torch.full((5, 2), 0.7), torch.ones(5, 2, dtype=torch.long))
    assert labelled_counts(cols, lambda t: t) == {"c": 2, "m": 5, "r": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(cols["r"]["mse"].compute()) and math.isnan(cols["r"]["mae"].compute())
        empty = task_metrics(TaskSpec("c", 3))  # no labelled sample: NaN, not 0
        assert all(math.isnan(empty[k].compute()) for k in ("acc", "balanced_acc", "f1"))
