"""Callbacks: one concept per file."""

from mtl_lightning.callbacks.reversal_schedule import GradientReversalSchedule, grl_lambda
from mtl_lightning.callbacks.summary import MultiTaskSummary

__all__ = ["GradientReversalSchedule", "MultiTaskSummary", "grl_lambda"]
from mtl_lightning.callbacks.task_affinity import TaskAffinity  # noqa: E402

__all__ += ["TaskAffinity"]
from mtl_lightning.callbacks.probe import LeakageProbe  # noqa: E402

__all__ += ["LeakageProbe"]
from mtl_lightning.callbacks.rng_state import RNGStateCheckpoint  # noqa: E402

__all__ += ["RNGStateCheckpoint"]
