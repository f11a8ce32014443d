"""LightningDataModules that declare their tasks."""

from mtl_lightning.data.base import MultiTaskDataModule, TensorTaskDataset
from mtl_lightning.data.synthetic import SyntheticSpeechDataModule, make_speech_features

__all__ = [
    "MultiTaskDataModule",
    "SyntheticSpeechDataModule",
    "TensorTaskDataset",
    "make_speech_features",
]
from mtl_lightning.data.tabular import SinCosDataModule, SyntheticTabularDataModule  # noqa: E402

__all__ += ["SinCosDataModule", "SyntheticTabularDataModule"]
from mtl_lightning.data.seeds import SyntheticSeedDataModule  # noqa: E402

__all__ += ["SyntheticSeedDataModule"]
