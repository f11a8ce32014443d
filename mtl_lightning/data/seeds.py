"""Partial and conditional labels: detect a seed, grade its quality only where there is one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.data.tabular import _TensorSplits, quantile_labels
from mtl_lightning.tasks import TaskSpec, apply_conditions
from mtl_lightning.validation import IGNORE_INDEX


class SyntheticSeedDataModule(_TensorSplits):
    """Seed detection (``seed``: no/yes) and quality grading (``quality``: 3 grades).

    A quality grade exists only for samples with a seed; elsewhere the data carries a
    placeholder grade (0, as an exported table often does), which ``conditions`` declares
    missing: ``{"quality": {"seed": [1]}}``. ``missing_quality`` further blanks that fraction of
    the real grades (``-100``), as unlabelled rows of a real dataset would be.

    Args:
        n_features: Input width.
        seed_rate: Fraction of samples with a seed.
        missing_quality: Fraction of seed samples whose grade is unknown (``-100``).
        conditions: ``{task: {condition_task: [classes]}}`` (``TaskSpec.only_when``); ``{}``
            trains quality on the placeholders too (the mistake this guards against).
        noise: Label noise of the linear scores.

    Example:
        >>> dm = SyntheticSeedDataModule(n_train=64, n_eval=16); dm.setup()
        >>> [(t.name, t.only_when) for t in dm.tasks]
        [('seed', None), ('quality', {'seed': [1]})]
    """

    def __init__(
        self,
        n_features: int = 16,
        seed_rate: float = 0.4,
        missing_quality: float = 0.2,
        conditions: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
        noise: float = 0.3,
        n_train: int = 2048,
        n_eval: int = 512,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(n_train, n_eval, batch_size, seed)
        if not 0.0 < seed_rate < 1.0 or not 0.0 <= missing_quality < 1.0:
            raise ValueError(
                f"need 0 < seed_rate < 1 and 0 <= missing_quality < 1, "
                f"got {seed_rate}, {missing_quality}"
            )
        self.n_features, self.seed_rate = n_features, seed_rate
        self.missing_quality, self.noise = missing_quality, noise
        if conditions is None:
            conditions = {"quality": {"seed": [1]}}
        self._tasks = apply_conditions([TaskSpec("seed", 2), TaskSpec("quality", 3)], conditions)
        g = torch.Generator().manual_seed(seed)
        self.directions = torch.randn(2, n_features, generator=g)

    def _make(self, n: int, seed: int) -> TensorTaskDataset:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, self.n_features, generator=g)
        scores = x @ self.directions.T + self.noise * torch.randn(n, 2, generator=g)
        has_seed = scores[:, 0] > torch.quantile(scores[:, 0], 1.0 - self.seed_rate)
        quality = quantile_labels(scores[:, 1], 3)
        quality = torch.where(has_seed, quality, torch.zeros_like(quality))  # placeholder
        blank = has_seed & (torch.rand(n, generator=g) < self.missing_quality)
        quality = torch.where(blank, torch.full_like(quality, IGNORE_INDEX), quality)
        return TensorTaskDataset(x, {"seed": has_seed.long(), "quality": quality})
