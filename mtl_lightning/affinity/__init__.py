"""Inter-task affinity (TAG lookahead) and task grouping: pure functions, no Lightning."""

from mtl_lightning.affinity.figure import affinity_figure, affinity_figure_image
from mtl_lightning.affinity.grouping import GroupingResult, group_score, search_groups
from mtl_lightning.affinity.heatmap import heatmap_image
from mtl_lightning.affinity.lookahead import (
    affinity_from_losses,
    cosine_matrix,
    lookahead_losses,
)

__all__ = [
    "GroupingResult",
    "affinity_figure",
    "affinity_figure_image",
    "affinity_from_losses",
    "cosine_matrix",
    "group_score",
    "heatmap_image",
    "lookahead_losses",
    "search_groups",
]
