"""Random loss weighting (Lin et al., 2021): fresh random weights at every training step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import WeightingStrategy
from mtl_lightning.weighting.static import task_weights, weighted_sum


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

    The paper's and LibMTL's weights (``LibMTL/weighting/RLW.py``: ``softmax(randn(K))``) sum to
    1; these are ``K`` times them, the plain sum's scale. Adversarial tasks keep their static
    weight. Evaluation uses weight 1.

    The draw at step ``t`` is :func:`random_weights` of ``(seed, t)``. Without ``seed``, it is
    the run's: ``torch.initial_seed()`` when the strategy is set up (what
    ``lightning.seed_everything`` sets), averaged over DDP ranks at the first training step so
    every rank draws the same weights. The seed in use and the step counter are buffers, so a
    resumed run continues the same sequence.

    Args:
        seed: Seed of the weight sequence; ``None`` (default) takes the run's seed.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> tasks = [TaskSpec("a", 2), TaskSpec("b", 2)]
        >>> r = RandomLossWeighting(seed=1)
        >>> r.setup(tasks)
        >>> total = r({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}, tasks)
        >>> round(float(total), 5), int(r.step), int(r.run_seed)
        (2.0, 1, 1)
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed
        self.names: list[str] = []
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("run_seed", torch.zeros((), dtype=torch.long))
        # False until the run's seed has been agreed by every DDP rank
        self.register_buffer("seed_agreed", torch.zeros((), dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        self.names = [t.name for t in tasks if not t.adversarial]
        given = self.seed is not None
        self.run_seed.fill_(self.seed if given else torch.initial_seed() % 2**32)
        self.seed_agreed.fill_(given)

    def _agree_on_seed(self) -> None:
        # float64 keeps a seed < 2**32 exact when every rank holds the same one
        seed = self.reduce_mean(self.run_seed.to(torch.float64))
        self.run_seed.fill_(int(torch.round(seed)))
        self.seed_agreed.fill_(True)

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        if self.training:
            if not bool(self.seed_agreed):
                self._agree_on_seed()
            drawn = random_weights(len(self.names), int(self.run_seed), int(self.step)).tolist()
            self.step += 1
        else:
            drawn = [1.0] * len(self.names)
        weights = task_weights(self.names, drawn, tasks)
        self.last_weights = weights
        return weighted_sum(losses, weights)
