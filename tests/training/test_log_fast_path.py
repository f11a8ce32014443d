"""The fast path of Lightning's per-log device move: a no-op move returns the accumulator as it
is; every other call (another device, a dtype, keyword arguments) still runs Lightning's walk."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection

from mtl_lightning.training import log_fast_path


def _metric():
    results = _ResultCollection(training=True)
    results.log("training_step", "loss", torch.tensor(3.0), on_step=True, on_epoch=True,
                batch_size=2)  # fmt: skip
    return results, results["training_step.loss"]


def test_a_move_to_the_device_it_is_on_is_skipped_and_others_are_not(monkeypatch):
    assert log_fast_path.install() and log_fast_path.install()  # idempotent
    walks = []
    original = log_fast_path._already_on
    monkeypatch.setattr(log_fast_path, "_already_on",
                        lambda m, d: walks.append(d) or original(m, d))  # fmt: skip
    results, metric = _metric()
    walks.clear()  # the log call's own move
    assert metric.to(torch.device("cpu")) is metric and walks == [torch.device("cpu")]
    metric.to(device=torch.device("cpu"))  # keywords: Lightning's own walk, no check
    assert walks == [torch.device("cpu")]
    moved = metric.to(torch.device("meta"))  # another device: Lightning's own move
    assert moved.value.device.type == "meta" and moved.cumulated_batch_size.device.type == "meta"


def test_logged_values_are_those_without_the_fast_path():
    def run(fast: bool) -> dict[str, float]:
        results = _ResultCollection(training=True)
        for step in range(5):
            value = torch.tensor(float(step) ** 2)
            results.log("training_step", "a", value, on_step=False, batch_size=step + 1)
            if not fast:  # what every log call did before: the whole walk
                results["training_step.a"].__class__.__dict__["to"].__wrapped__(
                    results["training_step.a"], value.device)  # fmt: skip
        return {k: float(v) for k, v in results.metrics(on_step=False)["log"].items()}

    log_fast_path.install()
    assert run(True) == pytest.approx(run(False)) and run(True)["a"] == pytest.approx(
        sum(s * s * (s + 1) for s in range(5)) / sum(range(1, 6))
    )


def test_a_logged_metric_object_on_its_device_is_not_walked(monkeypatch):
    from lightning.pytorch.trainer.connectors.logger_connector import result as result_module
    from torchmetrics import CatMetric, MeanMetric

    log_fast_path.install()
    walks = []
    original = result_module.apply_to_collection
    monkeypatch.setattr(result_module, "apply_to_collection",
                        lambda *a, **k: walks.append(a[0]) or original(*a, **k))  # fmt: skip
    results = _ResultCollection(training=True)
    for name, metric in (("mean", MeanMetric()), ("cat", CatMetric())):
        metric.update(torch.tensor([2.0, 4.0]))
        results.log("training_step", name, metric, on_step=False, on_epoch=True)
        logged = results[f"training_step.{name}"]
        assert logged.to(torch.device("cpu")) is logged
    assert walks == []  # neither the log calls' moves nor these walked
    assert float(results["training_step.mean"].value.compute()) == 3.0
    moved = results["training_step.mean"].to(torch.device("meta"))  # another device: walked
    assert len(walks) == 1 and moved.value.mean_value.device.type == "meta"
