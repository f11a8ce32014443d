"""Manifest to plan for :class:`~mtl_lightning.data.audio.AudioFeatureDataModule`: which rows are
used, their split, and which rows score which task.

The manifest is a CSV with a path column (relative to ``audio_root``, default: the manifest's
folder) and one column per task in ``label_columns``; other columns are ignored
(:func:`~mtl_lightning.data.manifest.read_manifest`). String labels become class indices (sorted
names, :class:`~mtl_lightning.data.vocab.LabelVocab`), built from the labels of the rows that are
used: with ``on_error="skip"`` after feature extraction, so a class whose files all failed gets
no head output.

Splits (``split``):

* ``stratified``: random, class proportions of the first main task kept.
* ``speaker_disjoint``: whole speakers (``speaker_column``) go to val and test, so the main
  tasks are scored on *unseen* speakers. A speaker adversary cannot be scored there (its
  classes are the training speakers), and scoring it on training utterances says nothing: its
  accuracy is only meaningful on *held-out utterances of speakers seen in training*. So
  ``heldout_fraction`` of every training speaker's utterances are held out into val and test,
  and in those splits the speaker task is labelled only on them while the other tasks are
  labelled only on unseen-speaker rows (the rest is ``-100``, which the model ignores):
  ``val/speaker/acc`` measures the adversary, ``val/emotion/acc`` generalisation.
* ``manifest``: the ``split_column`` says ``train``, ``val`` or ``test`` per row; speakers
  found only in val/test are warned about.

Missing labels: empty cells of ``partial_tasks`` mean "label missing" (``-100``); elsewhere a
missing label is a bad row. Conditional tasks (``conditions``): ``{"quality": {"seed":
["yes"]}}`` grades ``quality`` only on rows whose ``seed`` cell is ``yes``; the declared
``TaskSpec`` carries ``only_when={"seed": [index of "yes"]}``. On the other rows (``seed`` empty
included) the ``quality`` cell is ignored, whatever it holds: empty, or a placeholder such as
``n/a`` or ``0``, it becomes ``-100`` and is not a class of the task. Where the condition holds
the label is required, as for any task (unless ``quality`` is also a partial task).

Predicting: labels are not needed, so a predict manifest may lack the label columns or leave
cells empty (and, with ``predict_split="all"``, lack the speaker and split columns).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mtl_lightning.data.label_checks import label_problems
from mtl_lightning.data.manifest import (
    ManifestError,
    ManifestRow,
    RowProblem,
    read_manifest,
    report_problems,
)
from mtl_lightning.data.splits import Split, speaker_disjoint_split, stratified_split
from mtl_lightning.data.vocab import LabelVocab

__all__ = [
    "Plan",
    "SplitMode",
    "check_conditions",
    "check_label_columns",
    "check_labels",
    "check_split_mode",
    "plan_vocab",
    "read_plan",
]

log = logging.getLogger(__name__)
SplitMode = Literal["stratified", "speaker_disjoint", "manifest"]
Conditions = dict[str, tuple[str, list[str]]]  # {task: (other_task, [label names])}


@dataclass
class Plan:
    """What the manifest alone decides: usable rows, their splits and labels."""

    rows: list[ManifestRow]
    problems: list[RowProblem]
    split: Split
    labels: dict[str, list[str | None]]  # per task, per row; None = not scored
    predict: bool  # read for predict: labels (and speaker/split columns) may be missing


def check_label_columns(
    label_columns: list[str], adversarial: list[str], partial_tasks: Sequence[str]
) -> None:
    """A ``ValueError`` for no tasks, or an adversarial or partial task not among them."""
    unknown = sorted((set(adversarial) | set(partial_tasks)) - set(label_columns))
    if not label_columns or unknown:
        raise ValueError(
            f"label_columns {label_columns} must be non-empty and include every adversarial "
            f"and partial task; unknown: {unknown}"
        )


def check_split_mode(split: str, label_columns: list[str], adversarial: list[str]) -> None:
    """A ``ValueError`` for an unknown :data:`SplitMode`, or ``stratified`` without a main task."""
    if split not in ("stratified", "speaker_disjoint", "manifest"):
        raise ValueError(f"split must be stratified, speaker_disjoint or manifest: {split!r}")
    if split == "stratified" and not set(label_columns) - set(adversarial):
        raise ValueError(
            "split='stratified' keeps the class proportions of the first main task, but "
            f"every task in {label_columns} is adversarial: make one a main task or use "
            "split='speaker_disjoint' or 'manifest'"
        )


def check_conditions(
    conditions: Mapping[str, Mapping[str, Sequence[str]]] | None, label_columns: list[str]
) -> Conditions:
    """``{task: (other_task, [label names])}``, or a ``ValueError`` naming what is wrong.

    Example:
        >>> check_conditions({"quality": {"seed": [" yes"]}}, ["seed", "quality"])
        {'quality': ('seed', ['yes'])}
    """
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


def read_plan(
    manifest: Path, h: Any, label_columns: list[str], conditions: Conditions, predict: bool
) -> Plan:
    """Read ``manifest`` with the datamodule's hyperparameters ``h`` into a :class:`Plan`."""
    grouped = h.split == "speaker_disjoint" or h.normalize == "per_speaker"
    rows, problems = read_manifest(
        manifest,
        h.audio_root,
        h.path_column,
        label_columns,
        partial=h.partial_tasks,
        conditions={t: {o: names} for t, (o, names) in conditions.items()},
        split_column=h.split_column if h.split == "manifest" else None,
        group_column=h.speaker_column if grouped else None,
        # predict needs no labels; with predict_split="all" no split either
        optional=(
            [*label_columns]
            + ([h.speaker_column, h.split_column] if h.predict_split == "all" else [])
            if predict
            else ()
        ),
        encoding=h.encoding,
        allow_duplicates=h.allow_duplicates,
    )
    if not rows:
        report_problems(problems, "raise", manifest, 0)
        raise ValueError(f"{manifest}: no rows")
    split = split_rows(manifest, h, label_columns, rows, predict)
    labels = {t: [r.labels[t] for r in rows] for t in label_columns}
    speaker_task = h.speaker_column if h.speaker_column in label_columns else None
    if h.split == "speaker_disjoint":
        labels = _scored_labels(labels, split, speaker_task)
    if h.split == "manifest" and speaker_task is not None and not predict:
        _warn_unseen_speakers(manifest, labels[speaker_task], split.names)
    return Plan(rows, problems, split, labels, predict)


def _scored_labels(
    labels: dict[str, list[str | None]], split: Split, speaker_task: str | None
) -> dict[str, list[str | None]]:
    """Speaker-disjoint: in val/test, the speaker task keeps the labels of held-out utterances
    of training speakers, the other tasks those of unseen speakers (see the module doc)."""
    scored = {}
    for t, values in labels.items():
        keep = [
            n == "train" or (seen if t == speaker_task else not seen)
            for n, seen in zip(split.names, split.seen_heldout, strict=True)
        ]
        scored[t] = [v if k else None for v, k in zip(values, keep, strict=True)]
    return scored


def split_rows(
    manifest: Path, h: Any, label_columns: list[str], rows: list[ManifestRow], predict: bool
) -> Split:
    """The split of every row, as ``h.split`` says (every row ``test`` to predict on all)."""
    if predict and h.predict_split == "all":
        # every row is predicted; the configured split only matters for the statistics of
        # a datamodule without a checkpoint, and only where the manifest allows it
        missing = (h.split == "manifest" and any(r.split is None for r in rows)) or (
            h.split == "speaker_disjoint" and any(r.group is None for r in rows)
        )
        try:
            if not missing:
                return split_rows(manifest, h, label_columns, rows, predict=False)
        except ValueError:  # e.g. too few speakers for a speaker-disjoint split
            pass
        return Split(["test"] * len(rows), [False] * len(rows))
    if h.split == "manifest":
        return Split([str(r.split) for r in rows], [False] * len(rows))
    if h.split == "speaker_disjoint":
        if any(r.group is None for r in rows):
            raise ValueError(
                f"{manifest}: a speaker-disjoint split needs the {h.speaker_column!r} "
                "column on every row (to predict unlabelled recordings use predict_split: all)"
            )
        groups = [str(r.group) for r in rows]
        return speaker_disjoint_split(
            groups, h.val_fraction, h.test_fraction, h.heldout_fraction, h.seed
        )
    main = next(t for t in label_columns if t not in h.adversarial)
    strata = [r.labels[main] or "<missing>" for r in rows]
    return stratified_split(strata, h.val_fraction, h.test_fraction, h.seed)


def _warn_unseen_speakers(manifest: Path, speakers: list[str | None], names: list[str]) -> None:
    """``split="manifest"``: speakers only in val/test make the speaker head's scores (and its
    chance line, 1 / all speakers) misleading."""
    train = {s for s, n in zip(speakers, names, strict=True) if n == "train"}
    unseen = sorted({s for s in speakers if s is not None} - train)
    if unseen:
        message = (
            f"{manifest}: {len(unseen)} speaker(s) appear only in val/test "
            f"({', '.join(unseen[:5])}{', ...' if len(unseen) > 5 else ''}): the speaker "
            "task cannot classify their utterances, and its chance line (1 / all "
            f"{len(train) + len(unseen)} speakers) counts them. Use split: speaker_disjoint "
            "to score the adversary on held-out utterances of training speakers only."
        )
        log.warning(message)
        warnings.warn(message, stacklevel=3)  # the datamodule line that read the plan


def check_labels(
    manifest: Path,
    label_columns: list[str],
    rows: list[ManifestRow],
    min_label_count: int,
    near_duplicate_check: bool,
) -> None:
    """Rare and near-duplicate labels (typos that would become classes) are an error."""
    lines = [r.line for r in rows]
    messages = [
        m
        for t in label_columns
        for m in label_problems(
            t, [r.labels[t] for r in rows], lines, min_label_count, near_duplicate_check
        )
    ]
    if messages:
        listing = "\n".join(f"  {m}" for m in messages)
        raise ManifestError(
            f"{manifest}: suspicious labels (fix the cells, or set min_label_count: 1 "
            f"/ near_duplicate_check: false):\n{listing}"
        )


def plan_vocab(
    plan: Plan, label_columns: list[str], used: list[bool], train_speakers_of: str | None
) -> LabelVocab:
    """Classes of the ``used`` rows; ``train_speakers_of`` (a speaker-disjoint split's speaker
    task) gets the training rows' classes only: the adversary's classes are the training
    speakers."""
    keep = {t: list(used) for t in label_columns}
    if train_speakers_of is not None:
        train = [n == "train" for n in plan.split.names]
        keep[train_speakers_of] = [u and tr for u, tr in zip(used, train, strict=True)]
    return LabelVocab.build(
        {t: [v for v, k in zip(plan.labels[t], keep[t], strict=True) if k] for t in label_columns}
    )
