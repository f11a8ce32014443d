"""`ManifestTasks`: the tasks of a manifest datamodule, declared from its vocabulary.

Shared by :class:`~mtl_lightning.data.audio.AudioFeatureDataModule` and
:class:`~mtl_lightning.data.images.ImageManifestDataModule`: one classification task per label
column, its classes those of the vocabulary (the rows used, or a restored checkpoint's),
``adversarial`` columns trained as adversaries, conditional columns carrying
``TaskSpec.only_when`` as vocabulary indices. Also which stage the plan is read for (predict
needs no labels) and the manifest path of a predicted row.
"""

from __future__ import annotations

from typing import Any

from mtl_lightning.data.audio_plan import Conditions, Plan
from mtl_lightning.data.vocab import LabelVocab
from mtl_lightning.tasks import TaskSpec

__all__ = ["ManifestTasks"]


class ManifestTasks:
    """Mixin: :attr:`tasks`, :meth:`row_path` and the predict split of a manifest datamodule.

    The host has ``label_columns``, ``conditions`` (:data:`~.audio_plan.Conditions`), a
    :attr:`vocab`, ``_plan()`` and the hyperparameters ``adversarial``, ``adversary`` and
    ``predict_split``.
    """

    label_columns: list[str]
    conditions: Conditions
    hparams: Any
    trainer: Any
    _stage: str | None

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
