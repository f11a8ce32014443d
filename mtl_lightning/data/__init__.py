"""LightningDataModules that declare their tasks."""

from mtl_lightning.data.audio import AudioFeatureDataModule
from mtl_lightning.data.audio_streaming import StreamingAudioFeatureDataModule
from mtl_lightning.data.base import (
    MultiTaskDataModule,
    ResumableDataLoader,
    ResumableSampler,
    TensorTaskDataset,
)
from mtl_lightning.data.images import ImageManifestDataModule
from mtl_lightning.data.in_memory import InMemoryDataModule
from mtl_lightning.data.manifest import ManifestError
from mtl_lightning.data.predictions import LabelledPredictionWriter
from mtl_lightning.data.seeds import SyntheticSeedDataModule
from mtl_lightning.data.synthetic import SyntheticSpeechDataModule, make_speech_features
from mtl_lightning.data.tabular import SinCosDataModule, SyntheticTabularDataModule
from mtl_lightning.data.tabular_files import TabularDataModule, write_example_table
from mtl_lightning.data.tabular_streaming import StreamingTabularDataModule

__all__ = [
    "AudioFeatureDataModule",
    "ImageManifestDataModule",
    "InMemoryDataModule",
    "LabelledPredictionWriter",
    "ManifestError",
    "MultiTaskDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "SinCosDataModule",
    "StreamingAudioFeatureDataModule",
    "StreamingTabularDataModule",
    "SyntheticSeedDataModule",
    "SyntheticSpeechDataModule",
    "SyntheticTabularDataModule",
    "TabularDataModule",
    "TensorTaskDataset",
    "make_speech_features",
    "write_example_table",
]
