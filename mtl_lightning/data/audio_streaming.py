"""`StreamingAudioFeatureDataModule`: the audio datamodule with features streamed from shards.

Everything :class:`~mtl_lightning.data.audio.AudioFeatureDataModule` does (manifest, vocabulary,
conditions, partial tasks, the three split modes, normalisation, crops and whole-utterance
padding with masks, bad-row reports, labelled predictions, checkpoints) is done the same way;
only where the features live differs. They are written once into LitData shards
(:mod:`~mtl_lightning.data.shards`) and read a chunk at a time, so memory holds a few chunks
whatever the corpus size, and the splits hold only handles and labels.

Order: validation, test and predict read each split in storage order (each chunk decoded
once). Training reads :func:`~mtl_lightning.data.shard_order.chunk_local_order`: chunks
permuted per epoch and dealt to ``lanes``, each lane read ``shuffle_window`` chunks at a time
with the samples of a window shuffled. That order does not depend on the number of processes:
``N`` processes with batch ``B`` train on the global batches of one process with batch
``N * B``; with ``lanes`` a multiple of ``N``, each process reads its own chunks only. A run
resumed from a mid-epoch checkpoint continues the same order at the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from mtl_lightning.audio.parallel import ExtractionResult
from mtl_lightning.data.audio import AudioFeatureDataModule
from mtl_lightning.data.audio_features import extract_features
from mtl_lightning.data.audio_plan import Plan
from mtl_lightning.data.base import ResumableSampler
from mtl_lightning.data.manifest import RowProblem
from mtl_lightning.data.shard_order import ShardSampler
from mtl_lightning.data.shards import ShardItem, set_chunk_cache_size, write_shards
from mtl_lightning.data.utterances import UtteranceDataset

__all__ = ["StreamingAudioFeatureDataModule"]


class StreamingAudioFeatureDataModule(AudioFeatureDataModule):
    """:class:`~mtl_lightning.data.audio.AudioFeatureDataModule` over features in LitData shards.

    Takes every argument of the in-memory datamodule (``cache_dir`` aside: the shards are the
    cache), and:

    Args:
        manifest: CSV file.
        shard_dir: Folder of the shards (default ``.feature_shards`` beside the manifest): local,
            or a shared folder every node reads. Shards are reused by every run listing the same
            files with the same feature parameters; new or changed files are appended.
        chunk_bytes: Size of one chunk (LitData's ``chunk_bytes``, e.g. ``"16MB"``): the unit
            that is read and decoded at once.
        lanes: Chunks read side by side in training; a multiple of the number of processes
            lets each process read its own chunks only. The order depends on ``lanes``, not on
            the number of processes.
        shuffle_window: Chunks per lane whose samples are shuffled together.
        **kwargs: The arguments of :class:`~mtl_lightning.data.audio.AudioFeatureDataModule`.

    Memory: about ``(lanes * shuffle_window + 2) * chunk_bytes`` of decoded features per
    process and loader worker, plus the labels and a handle per row.

    Example:
        >>> import tempfile
        >>> from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus
        >>> manifest = write_corpus(tempfile.mkdtemp(), CorpusSpec(speakers=4, emotions=2,
        ...                                                          per_pair=2))
        >>> dm = StreamingAudioFeatureDataModule(str(manifest), adversarial=["speaker"],
        ...                                      n_mels=32, crop_frames=40, progress=False)
        >>> dm.setup("fit"); next(iter(dm.train_dataloader()))["features"].shape
        torch.Size([12, 1, 32, 40])
    """

    def __init__(
        self,
        manifest: str,
        shard_dir: str | None = None,
        chunk_bytes: str = "16MB",
        lanes: int = 4,
        shuffle_window: int = 4,
        **kwargs: Any,
    ) -> None:
        if lanes < 1 or shuffle_window < 1:
            raise ValueError(
                f"lanes and shuffle_window must be >= 1, got {lanes} and {shuffle_window}"
            )
        if kwargs.get("cache_dir") is not None:
            raise ValueError(
                "StreamingAudioFeatureDataModule keeps features in shard_dir; cache_dir is not "
                "used: set shard_dir instead"
            )
        super().__init__(manifest, **kwargs)
        self.shard_dir = Path(shard_dir) if shard_dir else self.manifest.parent / ".feature_shards"
        self.chunk_bytes, self.lanes, self.shuffle_window = chunk_bytes, lanes, shuffle_window

    def _extract(self, plan: Plan) -> tuple[ExtractionResult, list[RowProblem]]:
        """Handles to the rows' features in the shards (writing those not there yet)."""
        h = self.hparams
        names = [r.path for r in plan.rows]  # as the manifest writes them: a copy matches
        write = partial(write_shards, chunk_bytes=self.chunk_bytes, names=names)
        return extract_features(
            plan, self.spec, self.shard_dir, h.num_extract_workers, h.progress, extract=write
        )

    def _row_order(self, features: Sequence[Any]) -> Callable[[int], Any]:
        def location(row: int) -> tuple[str, int]:
            item = features[row]
            assert isinstance(item, ShardItem)
            return item.location

        return location

    def setup(self, stage: str | None = None) -> None:
        # the chunks training reads side by side, one for evaluation, one spare
        set_chunk_cache_size(self.lanes * self.shuffle_window + 2)
        super().setup(stage)

    def _train_sampler(self, train: UtteranceDataset, seed: int) -> ResumableSampler:
        chunks = [x.chunk_key for x in train.features]
        return ShardSampler(train, chunks, self.lanes, self.shuffle_window, seed=seed)
