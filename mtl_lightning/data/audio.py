"""`AudioFeatureDataModule`: a labelled corpus (manifest CSV + audio files) as cached features.

The datamodule composes four steps, each in its own module:

1. manifest: the CSV's rows, every bad row reported with its line
   (:mod:`~mtl_lightning.data.manifest`);
2. plan: which rows are used, their split, which rows score which task, the vocabulary
   (:mod:`~mtl_lightning.data.audio_plan`: the split modes, partial and conditional tasks);
3. features: extraction into the on-disk cache, unusable files, normalisation statistics
   (:mod:`~mtl_lightning.data.audio_features`: the cache and the bad-row policy);
4. datasets: crops, padding and masks (:mod:`~mtl_lightning.data.utterances`).

Here: ``setup()``, checkpoints and loaders. The tasks, with their class counts, are declared
from the labels of the rows used (:class:`~mtl_lightning.data.manifest_tasks.ManifestTasks`),
and the vocabulary is saved as ``label_vocab.json`` in the run directory and in checkpoints
(:meth:`AudioFeatureDataModule.state_dict`), so ``predict`` can report names. From a checkpoint (``restore_from``, which the CLI sets from
``--ckpt_path`` for ``validate``, ``test`` and ``predict``), the checkpoint's vocabulary defines
the tasks and its statistics normalise the features, whatever classes the manifest given now
has. A label the vocabulary does not know is then a bad row, except in ``predict``, where labels
are not needed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch import Tensor
from torch.utils.data import DataLoader

from mtl_lightning.audio.extractor import FeatureKind, FeatureSpec
from mtl_lightning.audio.parallel import ExtractionResult
from mtl_lightning.data.audio_features import (
    extract_features,
    log_extraction,
    prepare_norm,
    unknown_labels,
)
from mtl_lightning.data.audio_plan import (
    Plan,
    SplitMode,
    check_conditions,
    check_label_columns,
    check_labels,
    check_split_mode,
    plan_vocab,
    read_plan,
)
from mtl_lightning.data.base import ResumableDataLoader, ResumableSampler, _require_samples
from mtl_lightning.data.image_sets import EpochTaggedSampler
from mtl_lightning.data.in_memory import InMemoryDataModule
from mtl_lightning.data.manifest import OnError, RowProblem, check_on_error, report_problems
from mtl_lightning.data.manifest_tasks import ManifestTasks
from mtl_lightning.data.normalize import FeatureNorm, NormMode
from mtl_lightning.data.utterances import (
    UtteranceDataset,
    build_datasets,
    check_crop_frames,
    pad_collate,
    split_members,
)
from mtl_lightning.data.vocab import LabelVocab
from mtl_lightning.tasks import AdversaryKind

__all__ = ["AudioFeatureDataModule"]

log = logging.getLogger(__name__)


class AudioFeatureDataModule(ManifestTasks, InMemoryDataModule):
    """Labelled utterances listed in a CSV manifest, as cached log-mel / MFCC / eGeMAPS features.

    The manifest has a path column and one column per task in ``label_columns`` (string labels,
    sorted into class indices); features are computed once into a cache; the splits are
    stratified, speaker-disjoint (the speaker adversary scored on held-out utterances of training
    speakers) or given by the manifest. Batches are ``{"features": [B, 1, F, T], "targets":
    {task: [B]}, "index": [B]}``, plus ``"mask"`` (``[B, T]``, True on real frames) for whole
    utterances. The module docs of :mod:`~mtl_lightning.data.audio_plan` (splits, partial and
    conditional tasks) and :mod:`~mtl_lightning.data.audio_features` (cache, bad rows) say more.

    Args:
        manifest: CSV file.
        label_columns: One classification task per column, in this order.
        adversarial: Tasks trained adversarially (e.g. ``[speaker]``); the rest are main tasks.
        adversary: ``reversal`` or ``confusion`` for the adversarial tasks.
        partial_tasks: Tasks whose empty cells are missing labels rather than errors.
        conditions: Conditional tasks, ``{task: {other_task: [label names of other_task]}}``
            (names as written in the CSV): ``task`` is scored only on rows where
            ``other_task`` has one of those labels; its cells elsewhere are ignored.
        audio_root: Folder the paths are relative to (default: the manifest's folder).
        path_column: Column of file paths.
        speaker_column: Column of speaker ids (speaker-disjoint split, per-speaker statistics).
        split: ``stratified``, ``speaker_disjoint`` or ``manifest``.
        split_column: Column of split names for ``split="manifest"``.
        val_fraction: Fraction of rows (stratified) or speakers (speaker-disjoint) for val.
        test_fraction: The same for test.
        heldout_fraction: Speaker-disjoint: fraction of each training speaker's utterances held
            out (alternately to val and test) to score the speaker adversary.
        features: ``logmel``, ``mfcc`` or ``egemaps`` (``pip install "mtl_lightning[opensmile]"``).
        sample_rate: Audio is resampled to this rate.
        n_mels: Mel bands.
        n_fft: FFT size = window length (samples).
        hop_length: Hop (samples).
        f_min: Lowest mel frequency (Hz).
        f_max: Highest mel frequency (Hz, default Nyquist).
        n_mfcc: MFCC coefficients.
        crop_frames: Fixed length: random crops in training, centre crops in evaluation,
            zero-padding of shorter utterances. ``None``: whole utterances, padded per batch,
            with ``batch["mask"]`` (``[B, T]``, True on real frames) for the trunk.
        normalize: ``global`` (training-split mean/std per feature), ``per_speaker`` (each
            speaker by its own statistics: a baseline that removes speaker information by
            itself) or ``none``.
        cache_dir: Feature cache (default: ``.feature_cache`` beside the manifest).
        num_extract_workers: Processes computing features (1: in this process).
        progress: Show a progress bar during extraction.
        on_error: ``raise`` (default) or ``skip`` bad rows.
        predict_split: Rows ``predict`` runs on: ``train``, ``val``, ``test`` or ``all``.
        batch_size: Batch size of every loader.
        num_workers: Loader workers.
        seed: Seed of the split and of the training order.
        restore_from: A checkpoint of a run with this datamodule: its vocabulary (the tasks'
            classes) and normalisation statistics are used instead of the manifest's own.
        encoding: Text encoding of the manifest (default UTF-8, or UTF-16 with its BOM;
            ``latin-1`` for a spreadsheet export).
        allow_duplicates: Keep rows whose path repeats an earlier row's (default: bad rows).
        min_label_count: A label seen in fewer rows is an error (1: no check).
        near_duplicate_check: Labels one edit apart, or equal but for case and spaces
            (``Happy`` / ``happy``), are an error (:mod:`~mtl_lightning.data.label_checks`).

    Raises:
        ValueError: An argument out of range, an unknown task in ``adversarial``,
            ``partial_tasks`` or ``conditions``, or a split without training rows.
        ManifestError: Bad rows (``on_error="raise"``) or suspicious labels.

    Example:
        >>> import tempfile
        >>> from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus
        >>> root = tempfile.mkdtemp()
        >>> manifest = write_corpus(root, CorpusSpec(speakers=4, emotions=2, per_pair=2))
        >>> dm = AudioFeatureDataModule(str(manifest), adversarial=["speaker"], n_mels=32,
        ...                             crop_frames=40, progress=False)
        >>> [(t.name, t.size, t.role) for t in dm.tasks]
        [('emotion', 2, 'main'), ('speaker', 4, 'adversarial')]
        >>> dm.setup("fit"); next(iter(dm.train_dataloader()))["features"].shape
        torch.Size([12, 1, 32, 40])
    """

    def __init__(
        self,
        manifest: str,
        label_columns: Sequence[str] = ("emotion", "speaker"),
        adversarial: Sequence[str] = (),
        adversary: AdversaryKind = "reversal",
        partial_tasks: Sequence[str] = (),
        conditions: dict[str, dict[str, list[str]]] | None = None,
        audio_root: str | None = None,
        path_column: str = "path",
        speaker_column: str = "speaker",
        split: SplitMode = "stratified",
        split_column: str = "split",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        heldout_fraction: float = 0.2,
        features: FeatureKind = "logmel",
        sample_rate: int = 16000,
        n_mels: int = 64,
        n_fft: int = 400,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: float | None = None,
        n_mfcc: int = 20,
        crop_frames: int | None = None,
        normalize: NormMode = "global",
        cache_dir: str | None = None,
        num_extract_workers: int = 1,
        progress: bool = True,
        on_error: OnError = "raise",
        predict_split: Literal["train", "val", "test", "all"] = "test",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        restore_from: str | None = None,
        encoding: str | None = None,
        allow_duplicates: bool = False,
        min_label_count: int = 2,
        near_duplicate_check: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        label_columns, adversarial = list(label_columns), list(adversarial)
        check_label_columns(label_columns, adversarial, partial_tasks)
        self.conditions = check_conditions(conditions, label_columns)
        check_split_mode(split, label_columns, adversarial)
        check_on_error(on_error)
        check_crop_frames(crop_frames)
        self.label_columns = label_columns
        self.spec = FeatureSpec(
            features, sample_rate, n_mels, n_fft, hop_length, f_min, f_max, n_mfcc
        )
        self.norm = FeatureNorm(normalize)
        self.manifest = Path(manifest)
        self.cache_dir = Path(cache_dir) if cache_dir else self.manifest.parent / ".feature_cache"
        self.extraction: ExtractionResult | None = None
        self.skipped: list[RowProblem] = []
        self.datasets: dict[str, UtteranceDataset] = {}
        self._plan_cache: Plan | None = None
        self._features: list[Tensor | None] | None = None
        self._vocab: LabelVocab | None = None  # fixed once the tasks were declared
        self._stage: str | None = None
        self._restored: dict[str, Any] | None = None
        if restore_from is not None:
            self._restored = self._checkpoint_state(restore_from)

    # ------------------------------------------------------------------ tasks
    @property
    def vocab(self) -> LabelVocab:
        """Class names per task: the checkpoint's once one was restored, else those of the
        rows used (fixed from the first call on: the model's heads are sized from it)."""
        if self._restored is not None:
            return self._restored["vocab"]
        if self._vocab is None:
            self._vocab = self._build_vocab()
        return self._vocab

    def _build_vocab(self) -> LabelVocab:
        """Classes of the rows used: with ``on_error="skip"`` after extraction, so that a class
        whose files all failed gets no output (see :func:`~.audio_plan.plan_vocab`)."""
        h, plan = self.hparams, self._plan()
        used = [True] * len(plan.rows)
        if h.on_error == "skip":
            used = [x is not None for x in self._load_features()]
        speaker_task = h.speaker_column if h.speaker_column in self.label_columns else None
        train_only = speaker_task if h.split == "speaker_disjoint" else None
        return plan_vocab(plan, self.label_columns, used, train_only)

    # ------------------------------------------------------------------ plan
    def _plan(self) -> Plan:
        predict = self._predicting()
        if self._plan_cache is not None and self._plan_cache.predict != predict:
            # read for fitting before and now for predicting (or the reverse): read it again
            self._plan_cache, self._features, self.extraction, self.datasets = None, None, None, {}
        if self._plan_cache is None:
            self._plan_cache = read_plan(
                self.manifest, self.hparams, self.label_columns, self.conditions, predict
            )
        return self._plan_cache

    # ------------------------------------------------------------------ features
    def prepare_data(self) -> None:
        """Fill the feature cache (Lightning runs this on one process per node)."""
        self._load_features()

    def _load_features(self) -> list[Tensor | None]:
        h, plan = self.hparams, self._plan()
        if self._features is not None:
            return self._features
        result, problems = self._extract(plan)
        if self._restored is not None:  # the vocabulary is known: so are its unknown labels
            problems += self._unknown_labels(result.features)
        kept = sum(x is not None for x in result.features)
        report_problems(problems, h.on_error, self.manifest, kept)
        if not plan.predict:  # on the rows used: a label left with one row is a problem too
            used = [r for r, x in zip(plan.rows, result.features, strict=True) if x is not None]
            check_labels(
                self.manifest, self.label_columns, used, h.min_label_count, h.near_duplicate_check
            )
        self.skipped = sorted(problems, key=lambda p: p.line)
        log_extraction(result, len(self.skipped))
        self.extraction = result
        self._features = result.features
        return self._features

    def _extract(self, plan: Plan) -> tuple[ExtractionResult, list[RowProblem]]:
        """Features of the plan's rows (into the per-file cache) and the bad rows."""
        h = self.hparams
        return extract_features(plan, self.spec, self.cache_dir, h.num_extract_workers, h.progress)

    def _row_order(self, features: Sequence[Any]) -> Any:
        """How the rows of a split are ordered in its dataset (``None``: row order)."""
        return None

    def _unknown_labels(self, features: list[Tensor | None]) -> list[RowProblem]:
        plan = self._plan()
        return unknown_labels(self.manifest, plan, self.vocab, self.label_columns, features)

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        self._stage = stage
        self._plan()  # read again if it was read for another stage (predict / not predict)
        if not self.datasets:
            self._build_datasets()
        if stage == "fit" and self.trainer is not None:
            log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank asks
            if self.trainer.is_global_zero:
                self._write_run_files(log_dir)

    def _build_datasets(self) -> None:
        plan = self._plan()
        features = self._load_features()
        vocab = self.vocab
        speakers = [r.group for r in plan.rows]
        members = split_members(plan.split.names, features)
        if not members["train"] and not plan.predict:
            raise ValueError(f"{self.manifest}: the training split has no usable rows")
        prepare_norm(self.norm, features, speakers, members, self._restored, plan.predict)
        # predicting without a checkpoint or earlier statistics: FeatureNorm says so when read
        unknown = "missing" if plan.predict else "raise"
        self.datasets = build_datasets(
            features,
            plan.labels,
            vocab,
            self.norm,
            speakers,
            members,
            self.hparams.crop_frames,
            unknown,
            self._row_order(features),
            self.hparams.seed,
        )

    def _write_run_files(self, log_dir: str | None) -> None:
        if log_dir is None:
            return
        run = Path(log_dir)
        run.mkdir(parents=True, exist_ok=True)
        self.vocab.save(run / "label_vocab.json")
        stats = {"features": self.spec.params(), **self.norm.to_json()}
        (run / "feature_stats.json").write_text(json.dumps(stats, indent=2) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Vocabulary, normalisation statistics and feature parameters (stored in checkpoints)."""
        return {
            "vocab": self.vocab.to_dict(),
            "norm": self.norm.state_dict(),
            "features": self.spec.params(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Use a checkpoint's vocabulary and statistics (Lightning calls this after setup).

        The datasets are built again with them; rows whose label the checkpoint's vocabulary
        does not know are bad rows (raised, or skipped with ``on_error="skip"``), except when
        predicting.
        """
        self._restored = self._as_restored(state_dict)
        if self.datasets:
            self._rebuild_restored(self._load_features())

    def _checkpoint_state(self, path: str) -> dict[str, Any]:
        return self._as_restored(self._saved_state(path))

    def _as_restored(self, state: dict[str, Any]) -> dict[str, Any]:
        if state.get("features") != self.spec.params():
            log.warning(
                "the checkpoint's features %s differ from this datamodule's %s",
                state.get("features"),
                self.spec.params(),
            )
        return {**state, "vocab": LabelVocab(state["vocab"])}

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        """The seeded order of every datamodule (exact mid-epoch resume, DDP shards), with
        ``(index, epoch)`` keys: each sample's random crop is seeded by its epoch."""
        o, train = self._loader_options(), self._split_set("train")
        _require_samples(train, "training")
        return self._finish_loader(
            ResumableDataLoader(
                train,
                batch_size=o.batch_size,
                sampler=self._train_sampler(train, o.seed),
                num_workers=o.num_workers,
                persistent_workers=o.num_workers > 0,
            )
        )

    def _train_sampler(self, train: UtteranceDataset, seed: int) -> ResumableSampler:
        return EpochTaggedSampler(train, shuffle=True, seed=seed)

    def _finish_loader(self, loader: DataLoader) -> DataLoader:
        if self.hparams.crop_frames is None:
            loader.collate_fn = pad_collate  # whole utterances: pad per batch, with a mask
        return loader
