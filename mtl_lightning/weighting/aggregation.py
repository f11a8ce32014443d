"""Gradient aggregation through torchjd's aggregators (UPGrad, MGDA, PCGrad, IMTL-G, ...)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor
from torchjd.aggregation import Aggregator, GramianWeightedAggregator, UPGrad, WeightedAggregator

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import GradientLevel, GradientWeighting

#: torchjd aggregators whose weights are a deterministic function of the Gramian or Jacobian
#: (the others, PCGrad's random task order and unknown ones, run on a seeded CPU generator)
DETERMINISTIC = frozenset(
    {"UPGrad", "MGDA", "IMTLG", "AlignedMTL", "DualProj", "CAGrad", "NashMTL", "Mean", "Sum",
     "Constant"}
)  # fmt: skip


class JacobianAggregation(GradientWeighting):
    """Combine the main tasks' gradients of the shared trunk with a torchjd aggregator.

    The host computes the per-task gradients, averages them over DDP ranks *before* they are
    aggregated, and writes ``sum_k w_k g_k`` into the trunk's ``.grad``; this class only asks
    torchjd for the weights ``w``. Gramian-based aggregators (UPGrad, MGDA, PCGrad, IMTL-G,
    Aligned-MTL, DualProj, CAGrad) work at both levels: ``"shared"`` (gradients of the trunk's
    parameters, one backward pass per task) and ``"rep"`` (gradients of the shared
    representation, nearly free: the weights come from that Gramian and are applied to the
    losses). Aggregators that need the Jacobian itself (Nash-MTL) need ``level="shared"``.
    Randomised ones (PCGrad's task order) draw from the CPU generator, seeded by ``seed`` and
    the step inside ``fork_rng`` (so the global CPU state is left as it was and CUDA's is not
    touched): all ranks and resumed runs agree. CAGrad and Nash-MTL need torchjd's optional
    solvers: ``pip install "torchjd[cagrad]"`` / ``"torchjd[nash_mtl]"`` (torchjd's error says so).
    Nash-MTL keeps its state (step, previous weights, normalisation) in plain attributes, not in
    ``state_dict``: a resumed run starts it afresh.

    A task whose loss is 0 (no labelled sample on any rank: the losses are averaged over ranks
    first, so all ranks agree) gets weight 0, and the aggregator weights the other tasks as if
    it did not exist: it sees their sub-Gramian (MGDA no longer puts all the weight on the zero
    gradient). Stateful aggregators and those that need the Jacobian (Constant, Mean, Random,
    Nash-MTL) see every task and the absent tasks' weights are then set to 0.

    In YAML::

        weighting:
          class_path: mtl_lightning.weighting.JacobianAggregation
          init_args:
            aggregator: {class_path: torchjd.aggregation.UPGrad}
            level: shared

    Args:
        aggregator: A torchjd aggregator with weights (default ``UPGrad()``).
        level: ``"shared"`` or ``"rep"``.
        seed: Seed for randomised aggregators.

    Example:
        >>> from torchjd.aggregation import MGDA
        >>> from mtl_lightning.tasks import TaskSpec
        >>> agg = JacobianAggregation(MGDA())
        >>> agg.setup([TaskSpec("a", 2), TaskSpec("b", 2)])
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
        >>> agg.gramian_weights(g @ g.T, torch.ones(2))  # min-norm point of the hull
        tensor([0.9000, 0.1000])
    """

    def __init__(
        self, aggregator: Aggregator | None = None, level: GradientLevel = "shared", seed: int = 0
    ) -> None:
        super().__init__(level)
        self.aggregator = aggregator if aggregator is not None else UPGrad()
        name = type(self.aggregator).__name__
        if not isinstance(self.aggregator, WeightedAggregator):
            raise TypeError(
                f"aggregator {name} does not expose task weights; use one of torchjd's weighted "
                "aggregators (UPGrad, MGDA, PCGrad, IMTLG, AlignedMTL, DualProj, CAGrad, NashMTL)"
            )
        self.gramian_based = isinstance(self.aggregator, GramianWeightedAggregator)
        if level == "rep" and not self.gramian_based:
            raise ValueError(
                f"aggregator {name} needs the Jacobian itself, not its Gramian: use level='shared'"
            )
        self.seed = seed
        # aggregators with state sized by the tasks (GradVac, PCD, Nash-MTL, ExcessMTL)
        self.stateful = callable(getattr(self.aggregator, "reset", None))
        self.needs_jacobian = not self.gramian_based
        # torchjd's aggregators known to draw no random numbers need no seeded generator
        kind = type(self.aggregator)
        self.random = not (
            kind.__module__.startswith("torchjd.") and kind.__name__ in DETERMINISTIC
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        reset = getattr(self.aggregator, "reset", None)
        if callable(reset):
            reset()

    def gramian_weights(
        self, gramian: Tensor, losses: Tensor, jacobian: Tensor | None = None
    ) -> Tensor:
        # torchjd draws from the global CPU generator (PCGrad's torch.randperm) and takes no
        # generator argument: seed only that one (torch.manual_seed would also reseed, and not
        # restore, every CUDA device), and fork_rng puts its state back afterwards
        with torch.random.fork_rng(devices=[]) if self.random else contextlib.nullcontext():
            if self.random:
                torch.default_generator.manual_seed(self.seed * 1_000_003 + int(self.step))
            present = losses != 0
            if self.gramian_based and not self.stateful:
                weights = self._present_weights(gramian, present)
            else:
                weights = self._all_weights(gramian, jacobian) * present.to(gramian.dtype)
        if self.training:
            self.step.add_(1)
        return weights.detach()

    def _all_weights(self, gramian: Tensor, jacobian: Tensor | None) -> Tensor:
        if self.gramian_based:
            return self.aggregator.gramian_weighting(gramian)
        if jacobian is None:
            raise ValueError(f"{type(self.aggregator).__name__} needs level='shared'")
        return self.aggregator.weighting(jacobian)

    def _present_weights(self, gramian: Tensor, present: Tensor) -> Tensor:
        """The aggregator's weights of the present tasks' sub-Gramian; 0 for the others.

        The ``K x K`` Gramian and the mask reach the host in one transfer, which takes the
        place of the synchronisations torchjd's solvers make (MGDA's loop, the QP of UPGrad and
        DualProj, PCGrad's copy to the CPU): the choice and the small solve run there."""
        k = present.numel()
        host = torch.cat([gramian.flatten(), present.to(gramian.dtype)]).cpu()
        sub, keep = host[: k * k].view(k, k), host[k * k :] != 0
        if bool(keep.all()):
            return self.aggregator.gramian_weighting(sub).to(gramian.device)
        weights = torch.zeros(k, dtype=sub.dtype)
        if bool(keep.any()):
            index = keep.nonzero().squeeze(1)
            weights[index] = self.aggregator.gramian_weighting(sub[index][:, index])
        return weights.to(gramian.device)
