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
from mtl_lightning.data.audio import AudioFeatureDataModule  # noqa: E402
from mtl_lightning.data.manifest import ManifestError  # noqa: E402
from mtl_lightning.data.predictions import LabelledPredictionWriter  # noqa: E402

__all__ += ["AudioFeatureDataModule", "LabelledPredictionWriter", "ManifestError"]
from mtl_lightning.data.base import ResumableDataLoader, ResumableSampler  # noqa: E402

__all__ += ["ResumableDataLoader", "ResumableSampler"]
from mtl_lightning.data.seeds import SyntheticSeedDataModule  # noqa: E402

__all__ += ["SyntheticSeedDataModule"]
from mtl_lightning.data.tabular_files import TabularDataModule, write_example_table  # noqa: E402

__all__ += ["TabularDataModule", "write_example_table"]
