"""mtl_lightning: multi-task learning for PyTorch Lightning.

Shared trunks with per-task heads, gradient-reversed adversarial tasks, per-task metrics logged
against their chance line, and a LightningCLI (``python -m mtl_lightning fit``).
"""

from mtl_lightning.callbacks import GradientReversalSchedule, MultiTaskSummary, grl_lambda
from mtl_lightning.data import (
    AudioFeatureDataModule,
    MultiTaskDataModule,
    SyntheticSpeechDataModule,
)
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn import CNNTrunk, GradientReversal, MLPHead, gradient_reversal
from mtl_lightning.nonfinite import NonFiniteError
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.validation import BatchError

__version__ = "0.1.0"

__all__ = [
    "AudioFeatureDataModule",
    "BatchError",
    "CNNTrunk",
    "GradientReversal",
    "GradientReversalSchedule",
    "MLPHead",
    "MultiTaskDataModule",
    "MultiTaskModule",
    "MultiTaskSummary",
    "NonFiniteError",
    "SyntheticSpeechDataModule",
    "TaskSpec",
    "gradient_reversal",
    "grl_lambda",
]
