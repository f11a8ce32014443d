"""Tabular datamodules: five classification tasks with planted structure; sin/cos regression."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_lightning.data.base import TensorTaskDataset
from mtl_lightning.data.in_memory import InMemoryDataModule, LoaderOptions
from mtl_lightning.tasks import TaskSpec


def quantile_labels(score: Tensor, classes: int) -> Tensor:
    """Balanced class labels: the quantile bin of each score.

    Example:
        >>> quantile_labels(torch.tensor([0.3, -1.0, 2.0, 0.0]), 2).tolist()
        [1, 0, 1, 0]
    """
    ranks = score.argsort().argsort()
    return (ranks * classes // score.shape[0]).long()


class _TensorSplits(InMemoryDataModule):
    """Generated splits of ``n_train`` / ``n_eval`` samples: subclasses implement
    ``_make(n, seed) -> TensorTaskDataset``."""

    train_set: TensorTaskDataset | None
    val_set: TensorTaskDataset | None
    test_set: TensorTaskDataset | None

    def __init__(self, n_train: int, n_eval: int, batch_size: int, seed: int) -> None:
        super().__init__()
        if n_train < 1 or n_eval < 1 or batch_size < 1:
            raise ValueError(
                f"need n_train, n_eval, batch_size >= 1, got {n_train}, {n_eval}, {batch_size}"
            )
        self.n_train, self.n_eval, self.batch_size, self.seed = n_train, n_eval, batch_size, seed

    def _make(self, n: int, seed: int) -> TensorTaskDataset:
        raise NotImplementedError

    def _make_split(self, split: str, seed: int) -> TensorTaskDataset:
        return self._make(self.n_train if split == "train" else self.n_eval, seed)

    def _loader_options(self) -> LoaderOptions:
        return LoaderOptions(self.batch_size, self.seed)


class SyntheticTabularDataModule(_TensorSplits):
    """Classification tasks on tabular features with a planted, configurable task structure.

    Each entry of ``groups`` is a latent factor (a ``factor_dim``-dimensional Gaussian) shared by
    the tasks it lists; a task's label is the quantile bin of ``z_g . (u_g + task_noise * v_t)``
    (a shared direction per factor plus a small task-specific one), so tasks of one factor want
    the same features. Features are ``x = sum_g A_g z_g + noise`` with random ``A_g``; the factors
    of ``conflicting`` groups are written into the *same* input columns as the first factor, with
    opposite sign, so their tasks compete for the trunk. Default: the user's five tasks (3, 2, 4, 2
    and 3 classes) with planted groups ``{t1, t2}``, ``{t3, t4}``, ``{t5}`` and ``t5`` conflicting.

    Args:
        num_classes: Classes of each task (named ``t1``, ``t2``, ...).
        groups: Task indices (0-based) sharing each latent factor; must partition the tasks.
        conflicting: Indices into ``groups`` whose factor conflicts with the first group's.
        n_features: Input width ``n``.
        factor_dim: Dimension of each latent factor.
        task_noise: Weight of each task's own direction relative to the shared one.
        noise: Standard deviation of the feature noise.
        n_train: Training samples; ``n_eval`` each for validation and test.
        batch_size: Batch size of every loader.
        seed: Seed: the same seed gives the same data.

    Example:
        >>> dm = SyntheticTabularDataModule(n_train=64, n_eval=32)
        >>> [(t.name, t.size) for t in dm.tasks]
        [('t1', 3), ('t2', 2), ('t3', 4), ('t4', 2), ('t5', 3)]
        >>> dm.setup(); dm.train_set.features.shape, dm.train_set.targets["t3"].bincount().tolist()
        (torch.Size([64, 120]), [16, 16, 16, 16])
    """

    def __init__(
        self,
        num_classes: Sequence[int] = (3, 2, 4, 2, 3),
        groups: Sequence[Sequence[int]] = ((0, 1), (2, 3), (4,)),
        conflicting: Sequence[int] = (2,),
        n_features: int = 120,
        factor_dim: int = 4,
        task_noise: float = 0.3,
        noise: float = 0.5,
        n_train: int = 4096,
        n_eval: int = 1024,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(n_train, n_eval, batch_size, seed)
        members = sorted(i for g in groups for i in g)
        if members != list(range(len(num_classes))):
            raise ValueError(f"groups {groups} must partition the {len(num_classes)} tasks")
        if any(not 0 < c < len(groups) for c in conflicting):
            raise ValueError(f"conflicting {conflicting} must index groups other than the first")
        self.num_classes = [int(c) for c in num_classes]
        self.groups = [list(g) for g in groups]
        self.conflicting = list(conflicting)
        self.n_features, self.factor_dim = n_features, factor_dim
        self.task_noise, self.noise = task_noise, noise
        self._tasks = [TaskSpec(f"t{i + 1}", c) for i, c in enumerate(self.num_classes)]
        g = torch.Generator().manual_seed(seed)
        self.mixing = [torch.randn(factor_dim, n_features, generator=g) for _ in self.groups]
        for c in self.conflicting:
            self.mixing[c] = -self.mixing[0] + 0.5 * self.mixing[c]
        shared = [torch.randn(factor_dim, generator=g) for _ in self.groups]
        self.directions = {}
        for gi, group in enumerate(self.groups):
            for t in group:
                d = shared[gi] + task_noise * torch.randn(factor_dim, generator=g)
                self.directions[t] = d / d.norm()

    @property
    def planted_groups(self) -> list[list[str]]:
        """The planted groups as task names."""
        return [[self._tasks[i].name for i in g] for g in self.groups]

    def _make(self, n: int, seed: int) -> TensorTaskDataset:
        g = torch.Generator().manual_seed(seed)
        latents = [torch.randn(n, self.factor_dim, generator=g) for _ in self.groups]
        x = sum(z @ a for z, a in zip(latents, self.mixing, strict=True)) / math.sqrt(
            self.factor_dim * len(self.groups)
        )
        x = x + self.noise * torch.randn(n, self.n_features, generator=g)
        targets = {}
        for gi, group in enumerate(self.groups):
            for t in group:
                score = latents[gi] @ self.directions[t]
                targets[self._tasks[t].name] = quantile_labels(score, self.num_classes[t])
        return TensorTaskDataset(x, targets)


class SinCosDataModule(_TensorSplits):
    """Two regression tasks on one input: ``sin(x)`` and ``cos(x)`` (MSE), ``x ~ U(-pi, pi)``.

    Features are ``[x, x^2, ..., x^degree]`` scaled to about unit range, targets carry Gaussian
    ``noise``.

    Example:
        >>> dm = SinCosDataModule(n_train=8, n_eval=4); dm.setup()
        >>> [(t.name, t.kind) for t in dm.tasks], dm.train_set.features.shape
        ([('sin', 'regression'), ('cos', 'regression')], torch.Size([8, 4]))
    """

    def __init__(
        self,
        degree: int = 4,
        noise: float = 0.05,
        n_train: int = 2048,
        n_eval: int = 512,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(n_train, n_eval, batch_size, seed)
        if degree < 1:
            raise ValueError(f"degree must be >= 1, got {degree}")
        self.degree, self.noise = degree, noise
        self._tasks = [TaskSpec("sin", 1, kind="regression"), TaskSpec("cos", 1, kind="regression")]

    def _make(self, n: int, seed: int) -> TensorTaskDataset:
        g = torch.Generator().manual_seed(seed)
        x = (torch.rand(n, generator=g) * 2 - 1) * math.pi
        powers = torch.stack([(x / math.pi) ** k for k in range(1, self.degree + 1)], dim=1)
        targets = {
            "sin": torch.sin(x) + self.noise * torch.randn(n, generator=g),
            "cos": torch.cos(x) + self.noise * torch.randn(n, generator=g),
        }
        return TensorTaskDataset(powers, {k: v[:, None] for k, v in targets.items()})
