"""Every weighting strategy, built fresh by name (shared by the per-strategy tests)."""

from __future__ import annotations

from collections.abc import Callable

from torchjd.aggregation import IMTLG, MGDA, AlignedMTL, DualProj, PCGrad, UPGrad

from mtl_lightning.weighting import (
    FAMO,
    DynamicWeightAverage,
    GradNorm,
    InverseMetricWeighting,
    JacobianAggregation,
    RandomLossWeighting,
    StaticWeighting,
    UncertaintyWeighting,
    WeightingStrategy,
)


def strategy_factories(halved_task: str) -> dict[str, Callable[[], WeightingStrategy]]:
    """Name -> a factory of each strategy; the static one halves ``halved_task``'s weight."""
    aggregators = {"upgrad": UPGrad, "mgda": MGDA, "pcgrad": PCGrad, "imtlg": IMTLG}
    aggregators |= {"aligned_mtl": AlignedMTL, "dualproj": DualProj}
    factories: dict[str, Callable[[], WeightingStrategy]] = {
        "static": lambda: StaticWeighting({halved_task: 0.5}),
        "inverse_metric": lambda: InverseMetricWeighting(smoothing=0.0),
        "uncertainty": UncertaintyWeighting,
        "dwa": DynamicWeightAverage,
        "rlw": RandomLossWeighting,
        "famo": FAMO,
        "gradnorm": GradNorm,
        "gradnorm_rep": lambda: GradNorm(level="rep"),
    }
    for name, aggregator in aggregators.items():
        factories[name] = lambda a=aggregator: JacobianAggregation(a())
        factories[f"{name}_rep"] = lambda a=aggregator: JacobianAggregation(a(), level="rep")
    return factories
