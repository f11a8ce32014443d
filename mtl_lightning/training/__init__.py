"""The rooms of :class:`~mtl_lightning.MultiTaskModule`'s training step (private: not part of
the public API, which is unchanged by them).

- :mod:`~mtl_lightning.training.progress`: :class:`StepOutputs` (one forward pass) and
  :class:`StepState` (the step's counters);
- :mod:`~mtl_lightning.training.losses`: pure loss math beyond the per-task losses (the
  confusion term, the lambda-scaled trunk objectives);
- :mod:`~mtl_lightning.training.stage_metrics`: :class:`StageMetrics`, per stage and task;
- :mod:`~mtl_lightning.training.automatic`: the summed-loss path (:func:`automatic_step`);
- :mod:`~mtl_lightning.training.aggregated`: the per-task-gradient path (:class:`GradientStep`),
  over the pure helpers of :mod:`~mtl_lightning.training.packing`;
- :mod:`~mtl_lightning.training.diagnostics`: gradient cosines, weights, baselines.
"""

from mtl_lightning.training.aggregated import GradientStep, TaskRows, Update
from mtl_lightning.training.automatic import adversary_total, automatic_step, confusion_total
from mtl_lightning.training.diagnostics import (
    cosine_tasks,
    grad_cos_due,
    log_baselines,
    log_cosines,
    log_grad_cos,
    log_weights,
    task_gradients,
)
from mtl_lightning.training.losses import confusion_losses, scaled_objective, uniform_cross_entropy
from mtl_lightning.training.packing import (
    ReducedGradients,
    aggregated_tasks,
    cosine_matrix,
    culprit_message,
    flat_grad,
    gram_matrix,
    reduce_gramian,
    reduce_jacobian,
    reduce_packed,
    write_grads,
)
from mtl_lightning.training.progress import StepOutputs, StepState
from mtl_lightning.training.stage_metrics import StageMetrics

__all__ = [
    "GradientStep",
    "ReducedGradients",
    "StageMetrics",
    "StepOutputs",
    "StepState",
    "TaskRows",
    "Update",
    "adversary_total",
    "aggregated_tasks",
    "automatic_step",
    "confusion_losses",
    "confusion_total",
    "cosine_matrix",
    "cosine_tasks",
    "culprit_message",
    "flat_grad",
    "grad_cos_due",
    "gram_matrix",
    "log_baselines",
    "log_cosines",
    "log_grad_cos",
    "log_weights",
    "reduce_gramian",
    "reduce_jacobian",
    "reduce_packed",
    "scaled_objective",
    "task_gradients",
    "uniform_cross_entropy",
    "write_grads",
]
