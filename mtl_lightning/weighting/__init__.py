"""Task-weighting strategies: one per file, pure math beside the stateful class."""

from mtl_lightning.weighting.base import WeightingStrategy
from mtl_lightning.weighting.static import StaticWeighting, weighted_sum

__all__ = ["StaticWeighting", "WeightingStrategy", "weighted_sum"]
