"""`ImageManifestDataModule`: labelled images listed in a CSV manifest.

The same manifest rules as recordings (:mod:`~mtl_lightning.data.audio_plan`): a path column
relative to ``image_root`` (default: the manifest's folder), one column per task, partial and
conditional tasks, every bad row reported with its line, rare and near-duplicate labels an
error, the vocabulary saved in the run directory and in checkpoints. Images are decoded once by
torchvision at ``image_size`` (:mod:`~mtl_lightning.data.image_files`), kept as ``uint8``, and
normalised when read; training augmentation is a list of torchvision transforms seeded per
sample and epoch (:mod:`~mtl_lightning.data.image_sets`): resumed and multi-process runs see
the same augmented images as an uninterrupted single-process run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtl_lightning.data.audio_features import unknown_labels
from mtl_lightning.data.audio_plan import (
    Plan,
    check_conditions,
    check_label_columns,
    check_labels,
    check_split_mode,
    plan_vocab,
    read_plan,
)
from mtl_lightning.data.base import ResumableDataLoader
from mtl_lightning.data.image_files import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Channels,
    ImageSpec,
    channel_stats,
    decode_rows,
    require_torchvision,
)
from mtl_lightning.data.image_sets import Augment, EpochTaggedSampler, ImageDataset
from mtl_lightning.data.in_memory import InMemoryDataModule
from mtl_lightning.data.manifest import OnError, RowProblem, check_on_error, report_problems
from mtl_lightning.data.manifest_tasks import ManifestTasks
from mtl_lightning.data.utterances import split_members
from mtl_lightning.data.vocab import LabelVocab
from mtl_lightning.tasks import AdversaryKind

__all__ = ["ImageManifestDataModule"]

ImageNorm = Literal["dataset", "imagenet", "none"]


class ImageManifestDataModule(ManifestTasks, InMemoryDataModule):
    """Images listed in a CSV manifest (``path`` + one column per task), decoded by torchvision.

    Batches are ``{"features": [B, channels, image_size, image_size], "targets": {task: [B]},
    "index": [B]}``. Every image is decoded when the datamodule is set up: an unreadable,
    truncated or empty file is a bad row (its line and path reported; ``on_error: skip`` leaves
    it out with a warning). Evaluation images are resized (shorter side) and centre-cropped,
    nothing random; training images pass through ``augment`` too.

    Args:
        manifest: CSV file.
        label_columns: One classification task per column, in this order.
        adversarial: Tasks trained adversarially; the rest are main tasks.
        adversary: ``reversal`` or ``confusion`` for the adversarial tasks.
        partial_tasks: Tasks whose empty cells are missing labels rather than errors.
        conditions: Conditional tasks, ``{task: {other_task: [label names of other_task]}}``:
            ``task`` is scored only where ``other_task`` has one of those labels (e.g. grade a
            seed only where there is one); its cells elsewhere are ignored.
        image_root: Folder the paths are relative to (default: the manifest's folder).
        path_column: Column of image paths.
        split: ``stratified`` (seeded, class proportions of the first main task kept) or
            ``manifest`` (``split_column`` says ``train``, ``val`` or ``test``).
        split_column: Column of split names for ``split: manifest``.
        val_fraction: Fraction of rows for validation (stratified).
        test_fraction: Fraction of rows for test (stratified).
        image_size: Images are resized and centre-cropped to this many pixels square.
        channels: 3 (RGB; grey images are repeated, alpha dropped) or 1 (grey).
        augment: Training-only torchvision transforms (``class_path`` entries in YAML, e.g.
            ``torchvision.transforms.v2.RandomHorizontalFlip``), applied in order to the
            ``uint8`` image ``[channels, image_size, image_size]``, which they must return at
            that size. Seeded per sample and epoch.
        normalize: ``dataset`` (the training images' per-channel mean and std), ``imagenet``
            (the statistics torchvision's pretrained weights expect) or ``none`` (``[0, 1]``).
        on_error: ``raise`` (default) or ``skip`` bad rows.
        predict_split: Rows ``predict`` runs on: ``train``, ``val``, ``test`` or ``all``.
        batch_size: Batch size of every loader.
        num_workers: Loader workers.
        decode_threads: Threads decoding images at setup.
        seed: Seed of the split, the training order and the augmentation.
        restore_from: A checkpoint of a run with this datamodule: its vocabulary and
            normalisation statistics are used instead of the manifest's own.
        encoding: Text encoding of the manifest (default UTF-8, or UTF-16 with its BOM).
        allow_duplicates: Keep rows whose path repeats an earlier row's (default: bad rows).
        min_label_count: A label seen in fewer rows is an error (1: no check).
        near_duplicate_check: Labels one edit apart, or equal but for case and spaces, are an
            error.

    Raises:
        ValueError: An argument out of range or an unknown task.
        ManifestError: Bad rows (``on_error: raise``) or suspicious labels.

    Example:
        >>> import tempfile
        >>> from mtl_lightning.images.synthetic_corpus import ImageCorpusSpec, write_image_corpus
        >>> manifest = write_image_corpus(tempfile.mkdtemp(), ImageCorpusSpec(n_images=40, size=32))
        >>> dm = ImageManifestDataModule(str(manifest), ["seed", "quality"],
        ...     partial_tasks=["quality"], conditions={"quality": {"seed": ["yes"]}}, image_size=32)
        >>> [(t.name, t.size, t.only_when) for t in dm.tasks]
        [('seed', 2, None), ('quality', 3, {'seed': [1]})]
        >>> dm.setup("fit"); next(iter(dm.train_dataloader()))["features"].shape
        torch.Size([28, 3, 32, 32])
    """

    def __init__(
        self,
        manifest: str,
        label_columns: Sequence[str],
        adversarial: Sequence[str] = (),
        adversary: AdversaryKind = "reversal",
        partial_tasks: Sequence[str] = (),
        conditions: dict[str, dict[str, list[str]]] | None = None,
        image_root: str | None = None,
        path_column: str = "path",
        split: Literal["stratified", "manifest"] = "stratified",
        split_column: str = "split",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        image_size: int = 64,
        channels: Channels = 3,
        augment: list[nn.Module] | None = None,
        normalize: ImageNorm = "dataset",
        on_error: OnError = "raise",
        predict_split: Literal["train", "val", "test", "all"] = "test",
        batch_size: int = 32,
        num_workers: int = 0,
        decode_threads: int = 4,
        seed: int = 0,
        restore_from: str | None = None,
        encoding: str | None = None,
        allow_duplicates: bool = False,
        min_label_count: int = 2,
        near_duplicate_check: bool = True,
    ) -> None:
        super().__init__()
        require_torchvision()
        # the transforms are objects, not plain values: the CLI's config.yaml keeps them
        self.save_hyperparameters(ignore=["augment"])
        label_columns = list(label_columns)
        check_label_columns(label_columns, list(adversarial), partial_tasks)
        self.conditions = check_conditions(conditions, label_columns)
        if split not in ("stratified", "manifest"):
            raise ValueError(f"split must be 'stratified' or 'manifest', got {split!r}")
        check_split_mode(split, label_columns, list(adversarial))
        check_on_error(on_error)
        if normalize not in ("dataset", "imagenet", "none"):
            raise ValueError(f"normalize must be dataset, imagenet or none, got {normalize!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.label_columns = label_columns
        self.spec = ImageSpec(image_size, channels)
        self.augment = _compose(augment)
        self.manifest = Path(manifest)
        self.skipped: list[RowProblem] = []
        self.datasets: dict[str, ImageDataset] = {}
        self.stats: dict[str, list[float]] | None = None  # {"mean": [...], "std": [...]}
        self._plan_cache: Plan | None = None
        self._images: list[Tensor | None] | None = None
        self._vocab: LabelVocab | None = None
        self._stage: str | None = None
        self._restored: dict[str, Any] | None = None
        if restore_from is not None:
            self._restored = self._as_restored(self._saved_state(restore_from))

    # ------------------------------------------------------------------ plan and images
    @property
    def vocab(self) -> LabelVocab:
        """Class names per task: a restored checkpoint's, else those of the rows used."""
        if self._restored is not None:
            return self._restored["vocab"]
        if self._vocab is None:
            plan = self._plan()
            used = [True] * len(plan.rows)
            if self.hparams.on_error == "skip":
                used = [x is not None for x in self._load_images()]
            self._vocab = plan_vocab(plan, self.label_columns, used, None)
        return self._vocab

    def _plan(self) -> Plan:
        predict = self._predicting()
        if self._plan_cache is not None and self._plan_cache.predict != predict:
            self._plan_cache, self._images, self.datasets = None, None, {}
        if self._plan_cache is None:
            self._plan_cache = read_plan(
                self.manifest, self._plan_args(), self.label_columns, self.conditions, predict
            )
        return self._plan_cache

    def _plan_args(self) -> SimpleNamespace:
        """The hyperparameters :func:`~.audio_plan.read_plan` reads (images have no speakers)."""
        h = self.hparams
        return SimpleNamespace(
            **{k: h[k] for k in ("path_column", "partial_tasks", "split", "split_column")},
            **{k: h[k] for k in ("predict_split", "encoding", "allow_duplicates", "seed")},
            **{k: h[k] for k in ("adversarial", "val_fraction", "test_fraction")},
            audio_root=h.image_root,
            speaker_column=None,
            normalize="global",
            heldout_fraction=0.0,
        )

    def _load_images(self) -> list[Tensor | None]:
        """Every row's image, decoded once; bad rows reported (raised or skipped)."""
        if self._images is not None:
            return self._images
        h, plan = self.hparams, self._plan()
        images, problems = decode_rows(plan.rows, self.spec, h.decode_threads)
        problems = [*plan.problems, *problems]  # the manifest's bad rows and the images'
        if self._restored is not None:
            problems += unknown_labels(self.manifest, plan, self.vocab, self.label_columns, images)
        report_problems(problems, h.on_error, self.manifest, sum(x is not None for x in images))
        if not plan.predict:
            used = [r for r, x in zip(plan.rows, images, strict=True) if x is not None]
            check_labels(
                self.manifest, self.label_columns, used, h.min_label_count, h.near_duplicate_check
            )
        self.skipped = sorted(problems, key=lambda p: p.line)
        self._images = images
        return images

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        self._stage = stage
        self._plan()  # read again if it was read for another stage (predict / not predict)
        if not self.datasets:
            self._build_datasets()
        if stage == "fit" and self.trainer is not None:
            log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank asks
            if self.trainer.is_global_zero and log_dir is not None:
                self._write_run_files(Path(log_dir))

    def _build_datasets(self) -> None:
        plan = self._plan()
        images = self._load_images()
        members = split_members(plan.split.names, images)
        if not members["train"] and not plan.predict:
            raise ValueError(f"{self.manifest}: the training split has no usable rows")
        self.stats = self._statistics([images[i] for i in members["train"]])  # type: ignore[misc]
        vocab, h = self.vocab, self.hparams
        unknown = "missing" if plan.predict else "raise"
        for name, idx in [*members.items(), ("all", sorted(sum(members.values(), [])))]:
            self.datasets[name] = ImageDataset(
                [images[i] for i in idx],  # type: ignore[misc]
                {
                    t: vocab.encode(t, [plan.labels[t][i] for i in idx], unknown)
                    for t in self.label_columns
                },
                idx,
                self.stats["mean"],
                self.stats["std"],
                augment=self.augment if name == "train" else None,
                seed=h.seed,
            )

    def _statistics(self, train: list[Tensor]) -> dict[str, list[float]]:
        """Mean and std per channel: the checkpoint's, ImageNet's, the training images' or none."""
        c, norm = self.spec.channels, self.hparams.normalize
        if self._restored is not None:
            return {k: self._restored[k] for k in ("mean", "std")}
        if norm == "imagenet":
            mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
            return {
                "mean": mean if c == 3 else [sum(mean) / 3],
                "std": std if c == 3 else [sum(std) / 3],
            }
        if norm == "none":
            return {"mean": [0.0] * c, "std": [1.0] * c}
        if not train:
            raise ValueError(
                f"{self.manifest}: normalize: dataset needs training images for its statistics; "
                "predict from a checkpoint (--ckpt_path) or set normalize: imagenet / none"
            )
        mean, std = channel_stats(train)
        return {"mean": mean, "std": std}

    def _write_run_files(self, run: Path) -> None:
        run.mkdir(parents=True, exist_ok=True)
        self.vocab.save(run / "label_vocab.json")
        stats = {"images": self.spec.params(), **(self.stats or {})}
        (run / "image_stats.json").write_text(json.dumps(stats, indent=2) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Vocabulary, normalisation statistics and image size (stored in checkpoints)."""
        if self.stats is None:
            self.setup()
        assert self.stats is not None
        return {"vocab": self.vocab.to_dict(), **self.stats, "images": self.spec.params()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Use a checkpoint's vocabulary and statistics; the datasets are built again."""
        self._restored = self._as_restored(state_dict)
        if self.datasets:
            self._rebuild_restored(self._load_images())

    def _as_restored(self, state: dict[str, Any]) -> dict[str, Any]:
        if state.get("images") != self.spec.params():
            raise ValueError(
                f"the checkpoint's images {state.get('images')} differ from this datamodule's "
                f"{self.spec.params()}: set image_size and channels as they were in training"
            )
        return {**state, "vocab": LabelVocab(state["vocab"])}

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        """Seeded order that resumes mid-epoch (as every datamodule's), ``(index, epoch)`` keys
        so each sample's augmentation is seeded by its epoch."""
        h, dataset = self.hparams, self._split_set("train")
        return ResumableDataLoader(
            dataset,
            batch_size=h.batch_size,
            sampler=EpochTaggedSampler(dataset, shuffle=True, seed=h.seed),
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
        )


def _compose(augment: list[nn.Module] | None) -> Augment | None:
    """One callable of the transforms (``None`` for none)."""
    if not augment:
        return None
    for i, transform in enumerate(augment):
        if not callable(transform):
            raise TypeError(f"augment[{i}] is not a transform: {transform!r}")
    from torchvision.transforms import v2

    return v2.Compose(list(augment))
