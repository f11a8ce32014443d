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
- :mod:`~mtl_lightning.training.diagnostics`: gradient cosines, weights, baselines;
- :mod:`~mtl_lightning.training.forward`: the forward path (the trunk's mask and contract, each
  head's view of the embedding, one batch's forward pass with its losses);
- :mod:`~mtl_lightning.training.trainer_adapters`: what the module asks of its trainer (DDP
  reductions, the AMP loss scale, the logging cadence);
- :mod:`~mtl_lightning.training.arguments`, :mod:`~mtl_lightning.training.optimizers`,
  :mod:`~mtl_lightning.training.checkpoint`: the constructor's checks and plain hparams, the
  optimizer's parameter groups and schedule, the checkpointed accumulators across DDP ranks.
"""

from mtl_lightning.training.aggregated import GradientStep, TaskRows, Update
from mtl_lightning.training.arguments import check_options, keep_plain_hparams
from mtl_lightning.training.automatic import (
    adversary_total,
    automatic_step,
    confusion_total,
    losses_after_step,
)
from mtl_lightning.training.checkpoint import save_global_states, split_global_states
from mtl_lightning.training.diagnostics import (
    cosine_tasks,
    grad_cos_due,
    log_baselines,
    log_cosines,
    log_grad_cos,
    log_weights,
    task_gradients,
)
from mtl_lightning.training.forward import forward_losses, head_outputs, inspect_trunk, trunk_output
from mtl_lightning.training.losses import confusion_losses, scaled_objective, uniform_cross_entropy
from mtl_lightning.training.optimizers import param_groups, step_schedulers, with_scheduler
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
from mtl_lightning.training.trainer_adapters import (
    loss_scale,
    reduce_mean,
    reduce_sum,
    resumes_mid_epoch,
    should_log_step,
    shows_progress_bar,
)

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
    "check_options",
    "confusion_losses",
    "confusion_total",
    "cosine_matrix",
    "cosine_tasks",
    "culprit_message",
    "flat_grad",
    "forward_losses",
    "grad_cos_due",
    "gram_matrix",
    "head_outputs",
    "inspect_trunk",
    "keep_plain_hparams",
    "log_baselines",
    "log_cosines",
    "log_grad_cos",
    "log_weights",
    "loss_scale",
    "losses_after_step",
    "param_groups",
    "reduce_gramian",
    "reduce_jacobian",
    "reduce_mean",
    "reduce_packed",
    "reduce_sum",
    "resumes_mid_epoch",
    "save_global_states",
    "scaled_objective",
    "should_log_step",
    "shows_progress_bar",
    "split_global_states",
    "step_schedulers",
    "task_gradients",
    "trunk_output",
    "uniform_cross_entropy",
    "with_scheduler",
    "write_grads",
]
