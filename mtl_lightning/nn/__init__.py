"""Plain torch modules (no Lightning): trunks, heads, gradient reversal."""

from mtl_lightning.nn.dense import DenseTrunk
from mtl_lightning.nn.heads import MLPHead
from mtl_lightning.nn.reversal import GradientReversal, gradient_reversal
from mtl_lightning.nn.trunks import CNNTrunk
from mtl_lightning.nn.vision import TorchvisionTrunk

__all__ = [
    "CNNTrunk",
    "DenseTrunk",
    "GradientReversal",
    "MLPHead",
    "TorchvisionTrunk",
    "gradient_reversal",
]
