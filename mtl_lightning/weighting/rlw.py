"""Random loss weighting (Lin et al., 2021): fresh random weights at every training step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import WeightingStrategy
from mtl_lightning.weighting.static import weighted_sum


def random_weights(num_tasks: int, seed: int, step: int) -> Tensor:
    """``K * softmax(z)`` with ``z ~ N(0, I)`` drawn from a generator seeded by (seed, step).

    The draw depends only on its arguments, so every DDP rank and a resumed run get the same
    weights at the same step, and the global RNG stream is untouched.

    Example:
        >>> w = random_weights(3, seed=0, step=5)
        >>> round(float(w.sum()), 5), bool(torch.equal(w, random_weights(3, 0, 5)))
        (3.0, True)
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return num_tasks * torch.softmax(torch.randn(num_tasks, generator=generator), dim=0)


class RandomLossWeighting(WeightingStrategy):
    """RLW: each training step weights the main tasks by ``K * softmax(z)``, ``z ~ N(0, I)``.

    Weights sum to the number of main tasks (the plain sum's scale; the paper's sum to 1).
    Adversarial tasks keep their static weight. Evaluation uses weight 1.

    Args:
        seed: Seed of the weight sequence (combined with the step counter, which checkpoints).

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> tasks = [TaskSpec("a", 2), TaskSpec("b", 2)]
        >>> r = RandomLossWeighting(seed=1)
        >>> r.setup(tasks)
        >>> total = r({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}, tasks)
        >>> round(float(total), 5), int(r.step)
        (2.0, 1)
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.names: list[str] = []
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        self.names = [t.name for t in tasks if not t.adversarial]

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        if self.training:
            drawn = random_weights(len(self.names), self.seed, int(self.step)).tolist()
            self.step += 1
        else:
            drawn = [1.0] * len(self.names)
        dynamic = dict(zip(self.names, drawn, strict=True))
        weights = {t.name: dynamic.get(t.name, 1.0) * t.weight for t in tasks}
        self.last_weights = weights
        return weighted_sum(losses, weights)
