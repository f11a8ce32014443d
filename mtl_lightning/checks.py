"""Checks that turn bad data splits and bad checkpoint files into errors naming what is wrong.

Batch-level checks live in :mod:`mtl_lightning.validation` (they run on every step); these run
once: on a datamodule's splits right after ``setup()`` and on ``--ckpt_path`` before a run.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.validation import multilabel_problem

_MAX_LISTED = 10


class DataError(ValueError):
    """A data split does not fit the declared tasks."""


class CheckpointFileError(ValueError):
    """A checkpoint file is missing, truncated or not a torch checkpoint."""


class MissingClassWarning(UserWarning):
    """A class occurs in validation/test data but never in the training data."""


def _listed(values: Sequence[object]) -> str:
    head = ", ".join(str(v) for v in values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return f"[{head}{f', ... ({more} more)' if more > 0 else ''}]"


def _rows(mask: Tensor) -> str:
    return _listed(mask.nonzero().flatten().tolist())


def check_split(
    split: str, features: Tensor, targets: Mapping[str, Tensor], tasks: Sequence[TaskSpec]
) -> None:
    """Raise :class:`DataError` naming the split, task and rows if a split does not fit its tasks.

    Checks: the split is not empty; it has labels for every declared task and for no other; label
    and feature row counts agree; features are finite; class labels are integers in ``[0, K)``
    (``-100`` marks a missing label); regression targets are finite or NaN (missing);
    multilabel targets are float ``[n, size]`` rows of 0./1. or all NaN (a missing sample).

    Example:
        >>> check_split("val", torch.zeros(3, 2), {"a": torch.tensor([0, 4, 1])}, [TaskSpec("a", 3)])
        Traceback (most recent call last):
        ...
        mtl_lightning.checks.DataError: val split, task 'a': labels must be in [0, 3) (or -100 for missing); found 4 at row(s) [1]
    """
    n = features.shape[0]
    if n == 0:
        raise DataError(
            f"{split} split is empty (0 samples); every split needs at least one sample"
        )
    names = [t.name for t in tasks]
    unknown = sorted(set(targets) - set(names))
    if unknown:
        raise DataError(
            f"{split} split has labels for unknown task(s) {unknown}; the declared tasks are {names}"
        )
    missing = [t for t in names if t not in targets]
    if missing:
        raise DataError(
            f"{split} split has no labels for declared task(s) {missing}; "
            f"it has labels for {sorted(targets)}"
        )
    finite = (
        torch.isfinite(features.reshape(n, -1)).all(dim=1) if features.is_floating_point() else None
    )
    if finite is not None and not bool(finite.all()):
        raise DataError(f"{split} split: features contain NaN/inf at row(s) {_rows(~finite)}")
    for task in tasks:
        y = targets[task.name]
        where = f"{split} split, task {task.name!r}"
        if y.shape[0] != n:
            raise DataError(f"{where}: {y.shape[0]} labels for {n} feature rows")
        if task.is_classification:
            if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
                raise DataError(
                    f"{where}: class labels must be a 1-D integer tensor, got shape "
                    f"{list(y.shape)} dtype {y.dtype}"
                )
            bad = ((y < 0) | (y >= task.size)) & (y != -100)
            if bool(bad.any()):
                values = sorted(set(y[bad].tolist()))
                raise DataError(
                    f"{where}: labels must be in [0, {task.size}) (or -100 for missing); "
                    f"found {_listed(values)[1:-1]} at row(s) {_rows(bad)}"
                )
        elif task.is_multilabel:
            _check_multilabel_split(y, task, where)
        elif y.is_floating_point():
            inf = torch.isinf(y.reshape(n, -1)).any(dim=1)
            if bool(inf.any()):
                raise DataError(f"{where}: targets contain inf at row(s) {_rows(inf)}")


def _check_multilabel_split(y: Tensor, task: TaskSpec, where: str) -> None:
    problem = multilabel_problem(y, task.size, unit="row")
    if problem is not None:
        raise DataError(f"{where}: {problem}")


def warn_missing_classes(
    train: Mapping[str, Tensor],
    others: Mapping[str, Mapping[str, Tensor]],
    tasks: Sequence[TaskSpec],
) -> list[tuple[str, str, int]]:
    """Warn (:class:`MissingClassWarning`) for each class a split has but training never shows.

    The model cannot learn such a class: its accuracy on it is zero whatever the training does.
    Returns ``(split, task, class)`` triples. Only classification tasks are checked (a
    multilabel task's labels are independent binary outputs, each seen as 0 or 1).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     warn_missing_classes({"a": torch.tensor([0, 0])}, {"val": {"a": torch.tensor([0, 2])}},
        ...                          [TaskSpec("a", 3)])
        [('val', 'a', 2)]
        >>> str(w[0].message)
        "task 'a': class 2 occurs in the val split (1 sample(s)) but never in the training split"
    """

    def counts(labels: Tensor) -> dict[int, int]:
        classes, n = torch.unique(labels, return_counts=True)
        return dict(zip(classes.tolist(), n.tolist(), strict=True))

    names = {t.name for t in tasks if t.is_classification}
    return warn_missing_class_counts(
        {k: counts(v) for k, v in train.items() if k in names},
        {s: {k: counts(v) for k, v in t.items() if k in names} for s, t in others.items()},
        tasks,
    )


def warn_missing_class_counts(
    train: Mapping[str, Mapping[int, int]],
    others: Mapping[str, Mapping[str, Mapping[int, int]]],
    tasks: Sequence[TaskSpec],
) -> list[tuple[str, str, int]]:
    """:func:`warn_missing_classes` from the number of samples of each class per split and task
    (for data that is not in memory)."""
    found = []
    for task in tasks:
        if not task.is_classification or task.name not in train:
            continue
        seen = {c for c, n in train[task.name].items() if n > 0}
        for split, targets in others.items():
            for cls, count in sorted(targets.get(task.name, {}).items()):
                if cls in seen or cls == -100 or count == 0:
                    continue
                warnings.warn(
                    f"task {task.name!r}: class {cls} occurs in the {split} split "
                    f"({count} sample(s)) but never in the training split",
                    MissingClassWarning,
                    stacklevel=3,
                )
                found.append((split, task.name, int(cls)))
    return found


def check_checkpoint_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointFileError` naming the file if it is missing or not a readable
    torch checkpoint (e.g. truncated by a crash while it was copied), before Lightning tries it.

    ``torch.save`` writes a zip archive whose directory sits at the end, so a truncated file is
    recognised without loading it. Remote URLs and Lightning's keywords pass through.

    Example:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "cut.ckpt"; _ = bad.write_bytes(b"PK\\x03\\x04 half")
        >>> check_checkpoint_file(bad)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mtl_lightning.checks.CheckpointFileError: checkpoint .../cut.ckpt (9 bytes) is truncated or corrupt: File is not a zip file; ...
    """
    text = os.fspath(path)
    if text in ("last", "best", "hpc", "registry") or "://" in text:
        return
    file = Path(text)
    if not file.exists():
        raise CheckpointFileError(f"checkpoint {file} does not exist")
    if file.is_dir():
        raise CheckpointFileError(f"checkpoint {file} is a directory, not a checkpoint file")
    size = file.stat().st_size
    with open(file, "rb") as f:
        if f.read(1) == b"\x80":  # torch's legacy (pre-1.6) pickle format: leave it to torch
            return
    try:
        with zipfile.ZipFile(file) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointFileError(
            f"checkpoint {file} ({size} bytes) is truncated or corrupt: {error}; "
            "resume from an earlier checkpoint in the same directory"
        ) from None
    if broken is not None:
        raise CheckpointFileError(
            f"checkpoint {file} ({size} bytes) is corrupt: member {broken!r} fails its CRC check"
        )
