"""`LabelVocab`: string labels <-> class indices per task, saved as ``label_vocab.json``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from mtl_lightning.validation import IGNORE_INDEX

__all__ = ["LabelVocab", "label_sort_key"]


def label_sort_key(label: str) -> tuple[int, int, str]:
    """Sort key of a class name: integers by value first, then the other names as text.

    Example:
        >>> sorted(["b", "10", "2", "a"], key=label_sort_key)
        ['2', '10', 'a', 'b']
    """
    try:
        return (0, int(label), label)
    except ValueError:
        return (1, 0, label)


class LabelVocab:
    """Sorted class names per task; index ``i`` of a task is its ``i``-th name.

    Example:
        >>> vocab = LabelVocab.build({"emotion": ["sad", "happy", None, "sad"]})
        >>> vocab.names["emotion"], vocab.encode("emotion", ["sad", None, "happy"]).tolist()
        (['happy', 'sad'], [1, -100, 0])
        >>> vocab.decode("emotion", [0, 1])
        ['happy', 'sad']
        >>> vocab.unknown("emotion", ["sad", "bored", None])
        ['bored']
        >>> vocab.encode("emotion", ["bored"])
        Traceback (most recent call last):
        ...
        ValueError: emotion: label(s) ['bored'] not in the vocabulary ['happy', 'sad']
        >>> vocab.encode("emotion", ["bored", "sad"], unknown="missing").tolist()
        [-100, 1]
    """

    def __init__(self, names: Mapping[str, Sequence[str]]) -> None:
        self.names = {task: [str(n) for n in values] for task, values in names.items()}
        self._index = {t: {n: i for i, n in enumerate(v)} for t, v in self.names.items()}

    @classmethod
    def build(cls, labels: Mapping[str, Iterable[str | None]]) -> LabelVocab:
        """The vocabulary of the labels seen (``None`` = missing, not a class).

        Integer labels sort as numbers (``"2"`` before ``"10"``), before any other label.

        Example:
            >>> LabelVocab.build({"grade": ["10", "2", "1", "-1", None]}).names["grade"]
            ['-1', '1', '2', '10']
        """
        return cls(
            {
                t: sorted({v for v in values if v is not None}, key=label_sort_key)
                for t, values in labels.items()
            }
        )

    def condition(self, task: str, other: str, names: Sequence[str]) -> dict[str, list[int]]:
        """``TaskSpec.only_when`` of ``task``: ``other``'s label ``names`` as class indices.

        Example:
            >>> LabelVocab({"seed": ["no", "yes"]}).condition("grade", "seed", ["yes"])
            {'seed': [1]}
        """
        known = self.names.get(other, [])
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"task {task!r}: condition label(s) {unknown} are not in the vocabulary of task "
                f"{other!r}: {known[:20]} (quote labels YAML reads as booleans or numbers, "
                f'e.g. "yes")'
            )
        return {other: [known.index(n) for n in names]}

    def size(self, task: str) -> int:
        """Number of classes of ``task``."""
        return len(self.names[task])

    def unknown(self, task: str, labels: Iterable[str | None]) -> list[str]:
        """The labels (not ``None``) that are not classes of ``task``, in order, once each."""
        index = self._index[task]
        return list(dict.fromkeys(v for v in labels if v is not None and v not in index))

    def encode(
        self,
        task: str,
        labels: Iterable[str | None],
        unknown: Literal["raise", "missing"] = "raise",
    ) -> torch.Tensor:
        """Class indices; a missing label (``None``) becomes ``-100`` (ignored by the model).

        A label that is not a class of ``task`` raises ``ValueError`` (``unknown="raise"``):
        data labelled with a class the model has no output for is an error, not a silently
        ignored sample. ``unknown="missing"`` turns it into ``-100`` (``predict``, where labels
        are not used).
        """
        labels = list(labels)
        index = self._index[task]
        if unknown == "raise":
            bad = self.unknown(task, labels)
            if bad:
                raise ValueError(
                    f"{task}: label(s) {bad[:10]} not in the vocabulary {self.names[task][:20]}"
                )
        return torch.tensor(
            [IGNORE_INDEX if v is None else index.get(v, IGNORE_INDEX) for v in labels],
            dtype=torch.long,
        )

    def decode(self, task: str, indices: Iterable[int]) -> list[str]:
        """Class names of ``indices``."""
        return [self.names[task][int(i)] for i in indices]

    def to_dict(self) -> dict[str, list[str]]:
        """``{task: [names]}``, for checkpoints and JSON."""
        return {t: list(v) for t, v in self.names.items()}

    def save(self, path: str | Path) -> None:
        """Write ``{task: [names]}`` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelVocab) and self.names == other.names

    def __repr__(self) -> str:
        return f"LabelVocab({self.names})"
