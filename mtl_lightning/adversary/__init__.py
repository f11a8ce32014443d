"""Adversaries as their own concept: best-response attacker ensembles, the trunk's objectives
against them, and linear concept erasure (LEACE)."""

from mtl_lightning.adversary.adversary import Adversary
from mtl_lightning.adversary.attackers import AttackerEnsemble, attacker
from mtl_lightning.adversary.config import OBJECTIVES, AdversaryConfig, check_adversary_tasks
from mtl_lightning.adversary.erasure import LinearEraser
from mtl_lightning.adversary.objectives import (
    class_mmd,
    confusion_objective,
    reversal_objective,
)

__all__ = [
    "OBJECTIVES",
    "Adversary",
    "AdversaryConfig",
    "AttackerEnsemble",
    "LinearEraser",
    "attacker",
    "check_adversary_tasks",
    "class_mmd",
    "confusion_objective",
    "reversal_objective",
]
