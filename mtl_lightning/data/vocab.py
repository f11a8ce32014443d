"""`LabelVocab`: string labels <-> class indices per task, saved as ``label_vocab.json``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from mtl_lightning.validation import IGNORE_INDEX

__all__ = ["LabelVocab"]


class LabelVocab:
    """Sorted class names per task; index ``i`` of a task is its ``i``-th name.

    Example:
        >>> vocab = LabelVocab.build({"emotion": ["sad", "happy", None, "sad"]})
        >>> vocab.names["emotion"], vocab.encode("emotion", ["sad", None, "bored"]).tolist()
        (['happy', 'sad'], [1, -100, -100])
        >>> vocab.decode("emotion", [0, 1])
        ['happy', 'sad']
    """

    def __init__(self, names: Mapping[str, Sequence[str]]) -> None:
        self.names = {task: [str(n) for n in values] for task, values in names.items()}
        self._index = {t: {n: i for i, n in enumerate(v)} for t, v in self.names.items()}

    @classmethod
    def build(cls, labels: Mapping[str, Iterable[str | None]]) -> LabelVocab:
        """The vocabulary of the labels seen (``None`` = missing, not a class)."""
        return cls(
            {t: sorted({v for v in values if v is not None}) for t, values in labels.items()}
        )

    def size(self, task: str) -> int:
        """Number of classes of ``task``."""
        return len(self.names[task])

    def encode(self, task: str, labels: Iterable[str | None]) -> torch.Tensor:
        """Class indices; a missing or unknown label becomes ``-100`` (ignored by the model)."""
        index = self._index[task]
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
