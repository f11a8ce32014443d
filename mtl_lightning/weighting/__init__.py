"""Task-weighting strategies: one per file, pure math beside the stateful class.

Loss-based strategies (:class:`StaticWeighting`, :class:`InverseMetricWeighting`,
:class:`UncertaintyWeighting`, :class:`DynamicWeightAverage`, :class:`RandomLossWeighting`,
:class:`FAMO`) turn per-task losses into a total. Gradient-based ones
(:class:`GradNorm`, :class:`JacobianAggregation` over torchjd's aggregators) weight per-task
gradients the host computes; the host then switches to manual optimisation.
"""

from mtl_lightning.weighting.aggregation import JacobianAggregation
from mtl_lightning.weighting.base import GradientWeighting, WeightingStrategy
from mtl_lightning.weighting.dwa import DynamicWeightAverage, dwa_weights
from mtl_lightning.weighting.famo import FAMO, famo_logit_gradient, famo_weights
from mtl_lightning.weighting.gradnorm import GradNorm, gradnorm_update, gradnorm_weight_gradient
from mtl_lightning.weighting.inverse_metric import InverseMetricWeighting, inverse_metric_weights
from mtl_lightning.weighting.rlw import RandomLossWeighting, random_weights
from mtl_lightning.weighting.static import StaticWeighting, task_weights, weighted_sum
from mtl_lightning.weighting.uncertainty import UncertaintyWeighting, uncertainty_total

__all__ = [
    "FAMO",
    "DynamicWeightAverage",
    "GradNorm",
    "GradientWeighting",
    "InverseMetricWeighting",
    "JacobianAggregation",
    "RandomLossWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "WeightingStrategy",
    "dwa_weights",
    "famo_logit_gradient",
    "famo_weights",
    "gradnorm_update",
    "gradnorm_weight_gradient",
    "inverse_metric_weights",
    "random_weights",
    "task_weights",
    "uncertainty_total",
    "weighted_sum",
]
