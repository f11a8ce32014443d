"""Metrics: per-task collections and the majority-class baseline."""

from mtl_lightning.metrics.collection import task_metrics
from mtl_lightning.metrics.majority import ClassCounts, majority_rate

__all__ = ["ClassCounts", "majority_rate", "task_metrics"]
