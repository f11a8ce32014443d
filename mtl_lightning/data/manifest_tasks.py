"""`ManifestTasks`: the tasks of a manifest datamodule, declared from its vocabulary.

Shared by :class:`~mtl_lightning.data.audio.AudioFeatureDataModule` and
:class:`~mtl_lightning.data.images.ImageManifestDataModule`: one classification task per label
column, its classes those of the vocabulary (the rows used, or a restored checkpoint's),
``adversarial`` columns trained as adversaries, conditional columns carrying
``TaskSpec.only_when`` as vocabulary indices. Also which stage the plan is read for (predict
needs no labels), the manifest path of a predicted row, the split datasets (``datasets``:
``train``, ``val``, ``test`` and ``all``) and their re-build with a restored vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from mtl_lightning.data.audio_features import unknown_labels
from mtl_lightning.data.audio_plan import Conditions, Plan
from mtl_lightning.data.manifest import RowProblem, report_problems
from mtl_lightning.data.vocab import LabelVocab
from mtl_lightning.tasks import TaskSpec

__all__ = ["ManifestTasks"]


class ManifestTasks:
    """Mixin: :attr:`tasks`, :meth:`row_path`, the splits and the predict split of a manifest
    datamodule.

    The host has ``manifest``, ``label_columns``, ``conditions``
    (:data:`~.audio_plan.Conditions`), a :attr:`vocab`, ``_plan()``, ``_build_datasets()``
    (which fills ``datasets``), ``skipped`` and the hyperparameters ``adversarial``,
    ``adversary``, ``predict_split`` and ``on_error``.
    """

    manifest: Path
    label_columns: list[str]
    conditions: Conditions
    datasets: dict[str, Dataset]
    skipped: list[RowProblem]
    hparams: Any
    trainer: Any
    _stage: str | None

    def _build_datasets(self) -> None:
        raise NotImplementedError

    @property
    def vocab(self) -> LabelVocab:
        raise NotImplementedError

    def _plan(self) -> Plan:
        raise NotImplementedError

    @property
    def tasks(self) -> list[TaskSpec]:
        """One classification task per label column, sized by the vocabulary."""
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

    def _only_when(self, task: str) -> dict[str, list[int]] | None:
        """``TaskSpec.only_when`` of ``task``: its condition's label names as vocabulary indices."""
        if task not in self.conditions:
            return None
        other, names = self.conditions[task]
        return self.vocab.condition(task, other, names)

    def row_path(self, row: int) -> str:
        """The manifest path of row ``row`` (the ``index`` a batch carries)."""
        return self._plan().rows[row].path

    def _predicting(self) -> bool:
        state = getattr(self.trainer, "state", None)
        if state is not None and state.fn is not None:
            return state.fn == "predict"
        return self._stage == "predict"

    @property
    def _predict_from(self) -> str:
        return self.hparams.predict_split

    def _rebuild_restored(self, items: list[Tensor | None]) -> None:
        """After a checkpoint's vocabulary was restored: rows (with ``items``: features or
        images) labelled with classes it lacks are bad rows (raised or skipped), and the
        datasets are built again with its classes and statistics."""
        problems = unknown_labels(
            self.manifest, self._plan(), self.vocab, self.label_columns, items
        )
        if problems:
            kept = sum(x is not None for x in items)
            report_problems(problems, self.hparams.on_error, self.manifest, kept)
            self.skipped = sorted([*self.skipped, *problems], key=lambda p: p.line)
        self.datasets = {}
        self._build_datasets()

    @property
    def train_set(self) -> Dataset | None:
        """The training split (``None`` until ``setup()``)."""
        return self.datasets.get("train")

    @property
    def val_set(self) -> Dataset | None:
        """The validation split (``None`` until ``setup()``)."""
        return self.datasets.get("val")

    @property
    def test_set(self) -> Dataset | None:
        """The test split (``None`` until ``setup()``)."""
        return self.datasets.get("test")

    def _split_set(self, split: str) -> Dataset:
        if split not in self.datasets:
            raise RuntimeError("call setup() before requesting a dataloader")
        return self.datasets[split]
