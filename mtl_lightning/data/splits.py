"""Train/val/test assignment of manifest rows: stratified, speaker-disjoint or given."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SPLIT_NAMES", "Split", "speaker_disjoint_split", "stratified_codes", "stratified_split"]


@dataclass(frozen=True)
class Split:
    """Per row: its split (``train``/``val``/``test``) and whether it is a *held-out utterance
    of a training speaker* (only in speaker-disjoint splits; such val/test rows score the
    speaker adversary, the other val/test rows, of unseen speakers, score the main tasks)."""

    names: list[str]
    seen_heldout: list[bool]


def _count(n: int, fraction: float) -> int:
    return int(round(fraction * n))


def _check_fractions(*fractions: float) -> None:
    if any(not 0.0 <= f < 1.0 for f in fractions) or sum(fractions[:2]) >= 1.0:
        raise ValueError(f"split fractions must be in [0, 1) and leave training data: {fractions}")


def stratified_split(
    labels: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Random split keeping each class's proportion in every split.

    Example:
        >>> s = stratified_split(["a"] * 10 + ["b"] * 10, 0.2, 0.1, seed=0)
        >>> [s.names.count(k) for k in ("train", "val", "test")]
        [14, 4, 2]
    """
    names, codes = np.unique(np.asarray(list(labels), dtype=object), return_inverse=True)
    split = stratified_codes(codes.reshape(-1), len(names), val_fraction, test_fraction, seed)
    return Split([SPLIT_NAMES[k] for k in split.tolist()], [False] * len(labels))


#: the split of a code of :func:`stratified_codes`
SPLIT_NAMES = ("train", "val", "test")


def stratified_codes(
    strata: np.ndarray, n_strata: int, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """:func:`stratified_split` on integer strata ``0 .. n_strata - 1`` (numbered in the sorted
    order of their names), as split codes (0 train, 1 val, 2 test): the same split for the
    same seed, in a few bytes per row.

    Example:
        >>> stratified_codes(np.array([0] * 10 + [1] * 10), 2, 0.2, 0.1, seed=0).tolist().count(1)
        4
    """
    _check_fractions(val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(strata), dtype=np.uint8)
    order = np.argsort(strata, kind="stable")
    bounds = np.searchsorted(strata[order], np.arange(n_strata + 1))
    for c in range(n_strata):
        members = order[bounds[c] : bounds[c + 1]]
        if not len(members):
            continue
        rows = members[rng.permutation(len(members))]
        n_val, n_test = _count(len(rows), val_fraction), _count(len(rows), test_fraction)
        out[rows[:n_val]] = 1
        out[rows[n_val : n_val + n_test]] = 2
    return out


def speaker_disjoint_split(
    speakers: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    heldout_fraction: float,
    seed: int,
) -> Split:
    """Whole speakers go to val or test (at least one each); of every training speaker,
    ``heldout_fraction`` of the utterances are held out, alternately into val and test, to
    measure the speaker adversary on utterances it has not trained on.

    Example:
        >>> spk = [f"s{i}" for i in range(6) for _ in range(10)]
        >>> s = speaker_disjoint_split(spk, 0.2, 0.2, 0.2, seed=0)
        >>> sorted({spk[i] for i, n in enumerate(s.names) if n == "val" and not s.seen_heldout[i]})
        ['s3']
        >>> sum(s.seen_heldout), s.names.count("train")
        (8, 32)
    """
    _check_fractions(val_fraction, test_fraction, heldout_fraction)
    rng = np.random.default_rng(seed)
    unique = sorted(set(speakers))
    order = [unique[j] for j in rng.permutation(len(unique))]
    n_val = max(1, _count(len(unique), val_fraction))
    n_test = max(1, _count(len(unique), test_fraction))
    if len(unique) - n_val - n_test < 2:
        raise ValueError(
            f"a speaker-disjoint split needs at least 2 training speakers; {len(unique)} speakers "
            f"with {n_val} for val and {n_test} for test leave {len(unique) - n_val - n_test}"
        )
    role = {s: "val" for s in order[:n_val]} | {s: "test" for s in order[n_val : n_val + n_test]}
    names = [role.get(s, "train") for s in speakers]
    seen = [False] * len(speakers)
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(speakers):
        if s not in role:
            by_speaker[s].append(i)
    for s in sorted(by_speaker):
        rows = [by_speaker[s][j] for j in rng.permutation(len(by_speaker[s]))]
        for k, i in enumerate(rows[: _count(len(rows), heldout_fraction)]):
            names[i], seen[i] = ("val", "test")[k % 2], True
    return Split(names, seen)
