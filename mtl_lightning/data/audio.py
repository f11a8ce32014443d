"""`AudioFeatureDataModule`: a labelled corpus (manifest CSV + audio files) as cached features."""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mtl_lightning.audio.extractor import FeatureKind, FeatureSpec
from mtl_lightning.audio.parallel import ExtractionResult, extract_all
from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.data.label_checks import label_problems
from mtl_lightning.data.manifest import (
    ManifestError,
    ManifestRow,
    OnError,
    RowProblem,
    read_manifest,
    report_problems,
)
from mtl_lightning.data.normalize import FeatureNorm, NormMode
from mtl_lightning.data.splits import Split, speaker_disjoint_split, stratified_split
from mtl_lightning.data.utterances import UtteranceDataset, pad_collate
from mtl_lightning.data.vocab import LabelVocab
from mtl_lightning.tasks import AdversaryKind, TaskSpec

__all__ = ["AudioFeatureDataModule"]

log = logging.getLogger(__name__)
SplitMode = Literal["stratified", "speaker_disjoint", "manifest"]
STAGE_SPLITS = ("train", "val", "test")


@dataclass
class _Plan:
    """What the manifest alone decides: usable rows, their splits and labels."""

    rows: list[ManifestRow]
    problems: list[RowProblem]
    split: Split
    labels: dict[str, list[str | None]]  # per task, per row; None = not scored
    predict: bool  # read for predict: labels (and speaker/split columns) may be missing


class AudioFeatureDataModule(MultiTaskDataModule):
    """Labelled utterances listed in a CSV manifest, as cached log-mel / MFCC / eGeMAPS features.

    The manifest has a path column (relative to ``audio_root``, default: the manifest's
    folder) and one column per task in ``label_columns``; other columns are ignored. String
    labels become class indices (sorted names); the tasks, with their class counts, are
    declared from the labels of the rows that are used (with ``on_error="skip"`` the features
    are extracted first, so a class whose files all failed gets no head output), and the
    vocabulary is saved as ``label_vocab.json`` in the run directory and in checkpoints
    (:meth:`state_dict`), so ``predict`` can report names.

    From a checkpoint (``restore_from``, which the CLI sets from ``--ckpt_path`` for
    ``validate``, ``test`` and ``predict``), the checkpoint's vocabulary defines the tasks and
    its statistics normalise the features, whatever classes the manifest given now has. A
    label the vocabulary does not know is then a bad row (below), except in ``predict``, where
    labels are not needed: a predict manifest may lack the label columns or leave cells empty
    (and, with ``predict_split="all"``, lack the speaker and split columns).

    Features are computed once per file and parameter set, in ``num_extract_workers``
    processes, into an on-disk cache keyed by (path, size, mtime, parameters) with atomic
    writes: a killed extraction resumes where it stopped. ``.npy`` / ``.pt`` files in the path
    column are precomputed features ``[n_features, frames]``, used as they are.

    Splits (``split``):

    * ``stratified``: random, class proportions of the first main task kept.
    * ``speaker_disjoint``: whole speakers (``speaker_column``) go to val and test, so the main
      tasks are scored on *unseen* speakers. A speaker adversary cannot be scored there (its
      classes are the training speakers), and scoring it on training utterances says nothing:
      its accuracy is only meaningful on *held-out utterances of speakers seen in training*.
      So ``heldout_fraction`` of every training speaker's utterances are held out into val and
      test, and in those splits the speaker task is labelled only on them while the other
      tasks are labelled only on unseen-speaker rows (the rest is ``-100``, which the model
      ignores): ``val/speaker/acc`` measures the adversary, ``val/emotion/acc`` generalisation.
    * ``manifest``: the ``split_column`` says ``train``, ``val`` or ``test`` per row.

    Bad rows (missing file, unreadable, empty or too short audio, any other failure to compute
    a file's features, missing label, a label the restored vocabulary does not know, unknown
    split value, non-finite or malformed precomputed features) raise one
    :class:`ManifestError` listing every one with its CSV line, or with ``on_error="skip"``
    are left out with a warning that counts and lists them. Empty cells of ``partial_tasks``
    mean "label missing" (``-100``).

    Conditional tasks (``conditions``): ``{"quality": {"seed": ["yes"]}}`` grades ``quality``
    only on rows whose ``seed`` cell is ``yes``; the declared ``TaskSpec`` carries
    ``only_when={"seed": [index of "yes"]}``. On the other rows (``seed`` empty included) the
    ``quality`` cell is ignored, whatever it holds: empty, or a placeholder such as ``n/a`` or
    ``0``, it becomes ``-100`` and is not a class of the task. Where the condition holds the
    label is required, as for any task (unless ``quality`` is also a partial task).

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
        unknown = sorted((set(adversarial) | set(partial_tasks)) - set(label_columns))
        if not label_columns or unknown:
            raise ValueError(
                f"label_columns {label_columns} must be non-empty and include every adversarial "
                f"and partial task; unknown: {unknown}"
            )
        self.conditions = self._check_conditions(conditions, label_columns)
        if split not in ("stratified", "speaker_disjoint", "manifest"):
            raise ValueError(f"split must be stratified, speaker_disjoint or manifest: {split!r}")
        if split == "stratified" and not set(label_columns) - set(adversarial):
            raise ValueError(
                "split='stratified' keeps the class proportions of the first main task, but "
                f"every task in {label_columns} is adversarial: make one a main task or use "
                "split='speaker_disjoint' or 'manifest'"
            )
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if crop_frames is not None and crop_frames < 1:
            raise ValueError(f"crop_frames must be >= 1 or None, got {crop_frames}")
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
        self._plan_cache: _Plan | None = None
        self._features: list[Tensor | None] | None = None
        self._vocab: LabelVocab | None = None  # fixed once the tasks were declared
        self._stage: str | None = None
        self._restored: dict[str, Any] | None = None
        if restore_from is not None:
            self._restored = self._checkpoint_state(restore_from)

    @staticmethod
    def _check_conditions(
        conditions: Mapping[str, Mapping[str, Sequence[str]]] | None, label_columns: list[str]
    ) -> dict[str, tuple[str, list[str]]]:
        """``{task: (other_task, [label names])}``, or a ``ValueError`` naming what is wrong."""
        checked = {}
        for task, cond in (conditions or {}).items():
            if task not in label_columns:
                raise ValueError(
                    f"conditions: unknown task {task!r}; the tasks are label_columns {label_columns}"
                )
            if not isinstance(cond, Mapping) or len(cond) != 1:
                raise ValueError(
                    f"conditions[{task!r}] must name exactly one other task and its labels, "
                    f"e.g. {{'seed': ['yes']}}; got {cond!r}"
                )
            ((other, names),) = cond.items()
            if other == task:
                raise ValueError(f"conditions[{task!r}]: a task cannot be conditioned on itself")
            if other not in label_columns:
                raise ValueError(
                    f"conditions[{task!r}]: unknown task {other!r}; the tasks are label_columns "
                    f"{label_columns}"
                )
            if (
                isinstance(names, (str, bytes))
                or not names
                or not all(isinstance(n, str) and n.strip() for n in names)
            ):
                raise ValueError(
                    f"conditions[{task!r}][{other!r}] must be a non-empty list of {other} label "
                    f"names as written in the CSV (quote ones YAML reads as booleans or numbers, "
                    f'e.g. "yes"); got {names!r}'
                )
            checked[task] = (other, [n.strip() for n in names])
        return checked

    def _only_when(self, task: str) -> dict[str, list[int]] | None:
        """``TaskSpec.only_when`` of ``task``: its condition's label names as vocabulary indices."""
        if task not in self.conditions:
            return None
        other, names = self.conditions[task]
        return self.vocab.condition(task, other, names)

    # ------------------------------------------------------------------ manifest
    @property
    def vocab(self) -> LabelVocab:
        """Class names per task: the checkpoint's once one was restored, else those of the
        rows used (fixed from the first call on: the model's heads are sized from it)."""
        if self._restored is not None:
            return self._restored["vocab"]
        if self._vocab is None:
            self._vocab = self._build_vocab()
        return self._vocab

    @property
    def tasks(self) -> list[TaskSpec]:
        h = self.hparams
        tasks = []
        for name in self.label_columns:
            if name not in self.vocab.names:
                raise ValueError(f"task {name!r} is not in the vocabulary {self.vocab.names}")
            only_when = self._only_when(name)  # first: a wrong condition leaves no labels
            size = self.vocab.size(name)
            if size < 2:
                where = (
                    f" on the rows where {self.conditions[name][0]} is one of "
                    f"{self.conditions[name][1]}"
                    if name in self.conditions
                    else ""
                )
                raise ValueError(
                    f"task {name!r} needs >= 2 classes, the manifest has {size}{where}"
                )
            role = "adversarial" if name in h.adversarial else "main"
            tasks.append(
                TaskSpec(
                    name,
                    size,
                    role=role,  # type: ignore[arg-type]
                    adversary=h.adversary,
                    only_when=only_when,
                )
            )
        return tasks

    def row_path(self, row: int) -> str:
        """The manifest path of row ``row`` (the ``index`` a batch carries)."""
        return self._plan().rows[row].path

    def _checkpoint_state(self, path: str) -> dict[str, Any]:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        key = type(self).__qualname__
        if key not in ckpt:
            raise ValueError(
                f"{path}: the checkpoint holds no {key} state (vocabulary, statistics)"
            )
        return self._as_restored(ckpt[key])

    def _as_restored(self, state: dict[str, Any]) -> dict[str, Any]:
        if state.get("features") != self.spec.params():
            log.warning(
                "the checkpoint's features %s differ from this datamodule's %s",
                state.get("features"),
                self.spec.params(),
            )
        return {**state, "vocab": LabelVocab(state["vocab"])}

    def _predicting(self) -> bool:
        state = getattr(self.trainer, "state", None)
        if state is not None and state.fn is not None:
            return state.fn == "predict"
        return self._stage == "predict"

    def _plan(self) -> _Plan:
        predict = self._predicting()
        if self._plan_cache is not None and self._plan_cache.predict != predict:
            # read for fitting before and now for predicting (or the reverse): read it again
            self._plan_cache, self._features, self.extraction, self.datasets = None, None, None, {}
        if self._plan_cache is None:
            self._plan_cache = self._read_plan(predict)
        return self._plan_cache

    def _read_plan(self, predict: bool) -> _Plan:
        h = self.hparams
        grouped = h.split == "speaker_disjoint" or h.normalize == "per_speaker"
        rows, problems = read_manifest(
            self.manifest,
            h.audio_root,
            h.path_column,
            self.label_columns,
            partial=h.partial_tasks,
            conditions={t: {o: names} for t, (o, names) in self.conditions.items()},
            split_column=h.split_column if h.split == "manifest" else None,
            group_column=h.speaker_column if grouped else None,
            # predict needs no labels; with predict_split="all" no split either
            optional=(
                [*self.label_columns]
                + ([h.speaker_column, h.split_column] if h.predict_split == "all" else [])
                if predict
                else ()
            ),
            encoding=h.encoding,
            allow_duplicates=h.allow_duplicates,
        )
        if not rows:
            report_problems(problems, "raise", self.manifest, 0)
            raise ValueError(f"{self.manifest}: no rows")
        split = self._split(rows, predict)
        labels = {t: [r.labels[t] for r in rows] for t in self.label_columns}
        speaker_task = h.speaker_column if h.speaker_column in self.label_columns else None
        if h.split == "speaker_disjoint":
            for t in self.label_columns:  # which rows score which task (see the class doc)
                keep = [
                    n == "train" or (seen if t == speaker_task else not seen)
                    for n, seen in zip(split.names, split.seen_heldout, strict=True)
                ]
                labels[t] = [v if k else None for v, k in zip(labels[t], keep, strict=True)]
        if h.split == "manifest" and speaker_task is not None and not predict:
            self._warn_unseen_speakers(labels[speaker_task], split.names)
        return _Plan(rows, problems, split, labels, predict)

    def _check_labels(self, rows: list[ManifestRow]) -> None:
        """Rare and near-duplicate labels (typos that would become classes) are an error."""
        h = self.hparams
        lines = [r.line for r in rows]
        messages = [
            m
            for t in self.label_columns
            for m in label_problems(
                t, [r.labels[t] for r in rows], lines, h.min_label_count, h.near_duplicate_check
            )
        ]
        if messages:
            listing = "\n".join(f"  {m}" for m in messages)
            raise ManifestError(
                f"{self.manifest}: suspicious labels (fix the cells, or set min_label_count: 1 "
                f"/ near_duplicate_check: false):\n{listing}"
            )

    def _build_vocab(self) -> LabelVocab:
        """Classes of the rows used: with ``on_error="skip"`` after extraction, so that a class
        whose files all failed gets no output; speaker-disjoint: the adversary's classes are the
        training speakers."""
        h, plan = self.hparams, self._plan()
        used = [True] * len(plan.rows)
        if h.on_error == "skip":
            used = [x is not None for x in self._load_features()]
        keep = {t: list(used) for t in self.label_columns}
        speaker_task = h.speaker_column if h.speaker_column in self.label_columns else None
        if h.split == "speaker_disjoint" and speaker_task is not None:
            train = [n == "train" for n in plan.split.names]
            keep[speaker_task] = [u and tr for u, tr in zip(used, train, strict=True)]
        return LabelVocab.build(
            {
                t: [v for v, k in zip(plan.labels[t], keep[t], strict=True) if k]
                for t in self.label_columns
            }
        )

    def _warn_unseen_speakers(self, speakers: list[str | None], names: list[str]) -> None:
        """``split="manifest"``: speakers only in val/test make the speaker head's scores
        (and its chance line, 1 / all speakers) misleading."""
        train = {s for s, n in zip(speakers, names, strict=True) if n == "train"}
        unseen = sorted({s for s in speakers if s is not None} - train)
        if unseen:
            message = (
                f"{self.manifest}: {len(unseen)} speaker(s) appear only in val/test "
                f"({', '.join(unseen[:5])}{', ...' if len(unseen) > 5 else ''}): the speaker "
                "task cannot classify their utterances, and its chance line (1 / all "
                f"{len(train) + len(unseen)} speakers) counts them. Use split: speaker_disjoint "
                "to score the adversary on held-out utterances of training speakers only."
            )
            log.warning(message)
            warnings.warn(message, stacklevel=2)

    def _split(self, rows: list[ManifestRow], predict: bool = False) -> Split:
        h = self.hparams
        if predict and h.predict_split == "all":
            # every row is predicted; the configured split only matters for the statistics of
            # a datamodule without a checkpoint, and only where the manifest allows it
            missing = (h.split == "manifest" and any(r.split is None for r in rows)) or (
                h.split == "speaker_disjoint" and any(r.group is None for r in rows)
            )
            try:
                if not missing:
                    return self._split(rows)
            except ValueError:  # e.g. too few speakers for a speaker-disjoint split
                pass
            return Split(["test"] * len(rows), [False] * len(rows))
        if h.split == "manifest":
            return Split([str(r.split) for r in rows], [False] * len(rows))
        if h.split == "speaker_disjoint":
            if any(r.group is None for r in rows):
                raise ValueError(
                    f"{self.manifest}: a speaker-disjoint split needs the {h.speaker_column!r} "
                    "column on every row (to predict unlabelled recordings use predict_split: all)"
                )
            groups = [str(r.group) for r in rows]
            return speaker_disjoint_split(
                groups, h.val_fraction, h.test_fraction, h.heldout_fraction, h.seed
            )
        main = next(t for t in self.label_columns if t not in h.adversarial)
        strata = [r.labels[main] or "<missing>" for r in rows]
        return stratified_split(strata, h.val_fraction, h.test_fraction, h.seed)

    # ------------------------------------------------------------------ features
    def prepare_data(self) -> None:
        """Fill the feature cache (Lightning runs this on one process per node)."""
        self._load_features()

    def _load_features(self) -> list[Tensor | None]:
        h, plan = self.hparams, self._plan()
        if self._features is not None:
            return self._features
        result = extract_all(
            [r.file for r in plan.rows],
            self.spec,
            self.cache_dir,
            h.num_extract_workers,
            h.progress,
        )
        problems = list(plan.problems)
        problems += [
            RowProblem(plan.rows[i].line, plan.rows[i].path, e) for i, e in result.errors.items()
        ]
        shapes = Counter(x.shape[0] for x in result.features if x is not None)
        if len(shapes) > 1:
            expected = shapes.most_common(1)[0][0]
            for i, x in enumerate(result.features):
                if x is not None and x.shape[0] != expected:
                    problems.append(
                        RowProblem(
                            plan.rows[i].line,
                            plan.rows[i].path,
                            f"{x.shape[0]} feature rows, the others have {expected}",
                        )
                    )
                    result.features[i] = None
        if self._restored is not None:  # the vocabulary is known: so are its unknown labels
            problems += self._unknown_labels(result.features)
        kept = sum(x is not None for x in result.features)
        report_problems(problems, h.on_error, self.manifest, kept)
        if not plan.predict:  # on the rows used: a label left with one row is a problem too
            self._check_labels(
                [r for r, x in zip(plan.rows, result.features, strict=True) if x is not None]
            )
        self.skipped = sorted(problems, key=lambda p: p.line)
        log.info(
            "features: %d computed (%.1f s of audio), %d from cache, %d precomputed, %d skipped",
            result.computed,
            result.seconds,
            result.cached,
            result.precomputed,
            len(self.skipped),
        )
        self.extraction = result
        self._features = result.features
        return self._features

    def _unknown_labels(self, features: list[Tensor | None]) -> list[RowProblem]:
        """Rows (with features) labelled with a class the vocabulary does not have: bad rows,
        whose features are dropped, in fit/validate/test; in predict labels are not used."""
        plan, vocab = self._plan(), self.vocab
        reasons: dict[int, list[str]] = {}
        for t in self.label_columns:
            names = vocab.names.get(t, [])
            known = set(names)
            for i, v in enumerate(plan.labels[t]):
                if v is not None and v not in known and features[i] is not None:
                    listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                    reasons.setdefault(i, []).append(
                        f"{t} label {v!r} is not a class of the model (vocabulary: {listed})"
                    )
        if plan.predict:
            if reasons:
                log.warning(
                    "%s: %d row(s) have labels the vocabulary does not know; predict ignores them",
                    self.manifest,
                    len(reasons),
                )
            return []
        for i in reasons:
            features[i] = None
        return [
            RowProblem(plan.rows[i].line, plan.rows[i].path, "; ".join(r))
            for i, r in sorted(reasons.items())
        ]

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
        h, plan = self.hparams, self._plan()
        features = self._load_features()
        vocab = self.vocab
        speakers = [r.group for r in plan.rows]
        members = {
            s: [i for i, n in enumerate(plan.split.names) if n == s and features[i] is not None]
            for s in STAGE_SPLITS
        }
        if not members["train"] and not plan.predict:
            raise ValueError(f"{self.manifest}: the training split has no usable rows")
        rest = members["val"] + members["test"]
        if self._restored is not None:
            self.norm.load_state_dict(self._restored["norm"])
            used = [i for i, x in enumerate(features) if x is not None]
            self.norm.add_speakers([features[i] for i in used], [speakers[i] for i in used])  # type: ignore[misc]
        elif members["train"] and not (plan.predict and self.norm.fitted):
            self.norm.fit(
                [features[i] for i in members["train"]],  # type: ignore[misc]
                [speakers[i] for i in members["train"]],
                [features[i] for i in rest],  # type: ignore[misc]
                [speakers[i] for i in rest],
            )
        # predicting without a checkpoint or earlier statistics: FeatureNorm says so when read
        unknown = "missing" if plan.predict else "raise"
        for name, idx in [*members.items(), ("all", sorted(sum(members.values(), [])))]:
            self.datasets[name] = UtteranceDataset(
                [features[i] for i in idx],  # type: ignore[misc]
                {
                    t: vocab.encode(t, [plan.labels[t][i] for i in idx], unknown)
                    for t in plan.labels
                },
                self.norm,
                [speakers[i] for i in idx],
                idx,
                crop_frames=h.crop_frames,
                train=name == "train",
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
            features = self._load_features()
            problems = self._unknown_labels(features)
            if problems:
                kept = sum(x is not None for x in features)
                report_problems(problems, self.hparams.on_error, self.manifest, kept)
                self.skipped = sorted([*self.skipped, *problems], key=lambda p: p.line)
            self.datasets = {}
            self._build_datasets()

    # ------------------------------------------------------------------ loaders
    def _dataset(self, name: str) -> UtteranceDataset:
        if name not in self.datasets:
            raise RuntimeError("call setup() before requesting a dataloader")
        return self.datasets[name]

    def _collate(self, loader: DataLoader) -> DataLoader:
        if self.hparams.crop_frames is None:
            loader.collate_fn = pad_collate  # whole utterances: pad per batch, with a mask
        return loader

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        loader = self.train_loader(
            self._dataset("train"), h.batch_size, seed=h.seed, num_workers=h.num_workers
        )
        return self._collate(loader)

    def val_dataloader(self) -> DataLoader:
        h = self.hparams
        return self._collate(self.eval_loader(self._dataset("val"), h.batch_size, h.num_workers))

    def test_dataloader(self) -> DataLoader:
        h = self.hparams
        return self._collate(self.eval_loader(self._dataset("test"), h.batch_size, h.num_workers))

    def predict_dataloader(self) -> DataLoader:
        h = self.hparams
        dataset = self._dataset(h.predict_split)
        return self._collate(self.eval_loader(dataset, h.batch_size, h.num_workers))
