"""Callbacks: one concept per file."""

from mtl_lightning.callbacks.collective_order import EpochMetricsSync
from mtl_lightning.callbacks.config_fingerprint import ConfigFingerprint
from mtl_lightning.callbacks.epoch_end_resume import EpochEndResume
from mtl_lightning.callbacks.fail_fast import FailFast
from mtl_lightning.callbacks.probe import LeakageProbe
from mtl_lightning.callbacks.reversal_schedule import GradientReversalSchedule, grl_lambda
from mtl_lightning.callbacks.rng_state import RNGStateCheckpoint
from mtl_lightning.callbacks.summary import MultiTaskSummary
from mtl_lightning.callbacks.task_affinity import TaskAffinity

__all__ = [
    "ConfigFingerprint",
    "EpochEndResume",
    "EpochMetricsSync",
    "FailFast",
    "GradientReversalSchedule",
    "LeakageProbe",
    "MultiTaskSummary",
    "RNGStateCheckpoint",
    "TaskAffinity",
    "grl_lambda",
]
