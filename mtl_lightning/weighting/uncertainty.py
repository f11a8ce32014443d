"""Uncertainty weighting (Kendall, Gal & Cipolla, 2018): learnable per-task log-variances."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting.base import WeightingStrategy
from mtl_lightning.weighting.static import task_weights


def uncertainty_total(losses: Tensor, log_vars: Tensor, regression: Tensor) -> Tensor:
    """``sum_k (c_k exp(-s_k) L_k + s_k / 2)``; ``c_k = 1/2`` for regression, else 1.

    ``s_k = log sigma_k^2``. For regression this is the Gaussian negative log-likelihood with
    a learned variance, ``L/(2 sigma^2) + log sigma`` (Kendall et al. 2018, eq. 5); for a
    classification (or multilabel) loss, the paper's approximation ``L/sigma^2 + log sigma``
    (eq. 10). Nothing is normalised: the weights ``c_k exp(-s_k)`` need not sum to ``K``.
    LibMTL (``LibMTL/weighting/UW.py``) uses the regression form ``L/(2 e^s) + s/2`` for every
    task; a classification term here equals it at ``s - log 2`` plus ``log(2)/2``.

    A task whose loss is exactly 0 (no labelled sample) drops out, ``s_k / 2`` included, so its
    ``s_k`` gets no gradient (the loss stays in the graph, multiplied by 0).

    Example:
        >>> uncertainty_total(torch.tensor([2.0, 4.0]), torch.tensor([0.0, 2.0]),
        ...                   torch.tensor([False, True]))
        tensor(3.2707)
        >>> uncertainty_total(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]),
        ...                   torch.tensor([False, True]))
        tensor(2.)
    """
    return _total(losses, log_vars, torch.where(regression, 0.5, 1.0).to(losses))


def _total(losses: Tensor, log_vars: Tensor, scale: Tensor) -> Tensor:
    """:func:`uncertainty_total` with ``scale = c`` given (nine tensor operations)."""
    terms = scale * torch.exp(-log_vars) * losses + 0.5 * log_vars
    return torch.where(losses != 0, terms, 0.0).sum()


class UncertaintyWeighting(WeightingStrategy):
    """Learned log-variances ``s_k``: total ``sum_k (c_k exp(-s_k) L_k + s_k / 2)``.

    ``c_k = 1/2`` for a regression task, 1 for a classification or multilabel task (their
    losses are likelihoods: :func:`uncertainty_total`). Main task ``k``'s weight is
    ``c_k exp(-s_k)`` times its ``TaskSpec.weight``, and is **not** normalised: at the default
    ``s_k = 0`` it is 1 for classification and 1/2 for regression, and the total also holds
    ``sum_k s_k / 2``. So this reproduces the plain sum only for classification tasks at
    ``s = 0``. The log-variances are parameters of this module: the model's optimizer learns
    them (:meth:`~mtl_lightning.module.MultiTaskModule.configure_optimizers` puts them in a
    parameter group without weight decay) and checkpoints keep them. Adversarial tasks keep
    their static ``TaskSpec.weight``. A task with a loss of exactly 0 (no labelled sample in
    this rank's batch) adds nothing, not even ``s_k / 2``: its ``s_k`` is not pulled down.

    Args:
        init_log_var: Initial ``s_k`` for every task.

    Example:
        >>> from mtl_lightning.tasks import TaskSpec
        >>> tasks = [TaskSpec("a", 2), TaskSpec("b", 1, kind="regression")]
        >>> u = UncertaintyWeighting()
        >>> u.setup(tasks)
        >>> float(u({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}, tasks))
        4.0
        >>> u.last_weights
        {'a': 1.0, 'b': 0.5}
    """

    def __init__(self, init_log_var: float = 0.0) -> None:
        super().__init__()
        self.init_log_var = init_log_var
        self.names: list[str] = []
        self.log_vars = nn.Parameter(torch.zeros(0))
        self.register_buffer("regression", torch.zeros(0, dtype=torch.bool))

    def setup(self, tasks: Sequence[TaskSpec]) -> None:
        main = [t for t in tasks if not t.adversarial]
        self.names = [t.name for t in main]
        self.log_vars = nn.Parameter(torch.full((len(main),), float(self.init_log_var)))
        # a multilabel task's BCE is a (Bernoulli) likelihood, weighted like a classification's
        self.regression = torch.tensor([t.kind == "regression" for t in main], dtype=torch.bool)
        # c_k, derived from `regression` (not checkpointed), in the losses' dtype once seen
        self.register_buffer("scale", torch.where(self.regression, 0.5, 1.0), persistent=False)

    def forward(self, losses: Mapping[str, Tensor], tasks: Sequence[TaskSpec]) -> Tensor:
        static = {t.name: t.weight for t in tasks}
        # a weight of exactly 1 multiplies by nothing (the same value, one op less per task)
        main = torch.stack(
            [losses[n] if static[n] == 1.0 else losses[n] * static[n] for n in self.names]
        )
        if self.scale.dtype != main.dtype:
            self.scale = self.scale.to(main.dtype)
        total = _total(main, self.log_vars.to(main.dtype), self.scale)
        extra = [t.weight * losses[t.name] for t in tasks if t.name not in self.names]
        if extra:
            total = total + torch.stack(extra).sum()
        # the log-variances change in place at the optimizer step: this step's, copied
        log_vars, specs = self.log_vars.detach().clone(), tuple(tasks)
        self._weights_when_read(lambda: self._weights(log_vars, specs))
        return total

    def _weights(self, log_vars: Tensor, tasks: Sequence[TaskSpec]) -> dict[str, float]:
        """The weights ``c_k exp(-s_k)`` of ``log_vars`` (times ``TaskSpec.weight``), per task."""
        scale = torch.where(self.regression.to(log_vars.device), 0.5, 1.0) * torch.exp(-log_vars)
        return task_weights(self.names, scale.tolist(), tasks, digits=6)
