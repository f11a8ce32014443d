"""TAG network selection: choose at most ``N`` task groups maximising the total affinity served.

A task's score in a group is the mean affinity *onto* it from the group's other members
(``singleton_score`` if it is alone). A candidate set of groups must cover every task; each task
is served by its best group in the set; the set's value is the sum of the served scores.

Search cost (exhaustive, exact):

- ``overlapping=True`` (TAG: groups may share tasks): every set of ``k <= N`` of the ``2^T - 1``
  non-empty groups, ``sum_k C(2^T - 1, k)`` sets of ``T`` scores each; e.g. 4,960 + 465 + 31 sets
  for 5 tasks and ``N = 3``, 2.8 M for 8 tasks (seconds). Beyond ~9 tasks use partitions.
- ``overlapping=False`` (each task in exactly one group): every partition into ``<= N`` blocks,
  ``sum_k S(T, k)`` (Stirling numbers of the second kind); 88,574 for 12 tasks and ``N = 3``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

MAX_OVERLAPPING_SETS = 20_000_000


@dataclass(frozen=True)
class GroupingResult:
    """The best set of groups (tuples of task indices), its total score and each task's group."""

    groups: tuple[tuple[int, ...], ...]
    score: float
    served_by: tuple[int, ...]
    candidates: int

    def named(self, names: Sequence[str]) -> list[list[str]]:
        """The groups with task names instead of indices."""
        return [[names[i] for i in g] for g in self.groups]


def group_score(
    affinity: np.ndarray, group: Sequence[int], task: int, singleton: float = 0.0
) -> float:
    """Mean affinity onto ``task`` from the other members of ``group``.

    Example:
        >>> z = np.array([[1.0, 0.4, -0.2], [0.6, 1.0, 0.0], [0.1, 0.3, 1.0]])
        >>> group_score(z, (0, 1, 2), 0), group_score(z, (2,), 2)
        (0.35, 0.0)
    """
    others = [i for i in group if i != task]
    if not others:
        return float(singleton)
    return float(np.mean([affinity[i, task] for i in others]))


def _score_table(
    affinity: np.ndarray, singleton: float
) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """All non-empty groups and ``table[g, t]`` = score of ``t`` in group ``g`` (-inf if absent)."""
    n = affinity.shape[0]
    groups = [g for k in range(1, n + 1) for g in itertools.combinations(range(n), k)]
    table = np.full((len(groups), n), -np.inf)
    for gi, g in enumerate(groups):
        for t in g:
            table[gi, t] = group_score(affinity, g, t, singleton)
    return groups, table


def _partitions(n: int, max_blocks: int) -> Iterator[list[list[int]]]:
    """Set partitions of ``range(n)`` into at most ``max_blocks`` blocks (restricted growth)."""

    def grow(i: int, blocks: list[list[int]]) -> Iterator[list[list[int]]]:
        if i == n:
            yield [list(b) for b in blocks]
            return
        for b in blocks:
            b.append(i)
            yield from grow(i + 1, blocks)
            b.pop()
        if len(blocks) < max_blocks:
            blocks.append([i])
            yield from grow(i + 1, blocks)
            blocks.pop()

    yield from grow(0, [])


def search_groups(
    affinity: np.ndarray | Sequence[Sequence[float]],
    max_groups: int,
    overlapping: bool = True,
    singleton_score: float = 0.0,
) -> GroupingResult:
    """Exhaustively find the set of at most ``max_groups`` groups with the highest total score.

    Args:
        affinity: ``[T, T]`` matrix, ``affinity[i, j]`` = effect of task ``i`` on task ``j``.
        max_groups: Largest number of groups (networks) allowed.
        overlapping: Allow a task in several groups (TAG); else search partitions only.
        singleton_score: Score of a task alone in its group (0: no transfer).

    Example:
        >>> z = np.array([[1, .5, -.3], [.4, 1, -.2], [-.1, -.3, 1]])
        >>> r = search_groups(z, max_groups=2)
        >>> r.groups, round(r.score, 2)
        (((0, 1), (2,)), 0.9)
    """
    z = np.asarray(affinity, dtype=float)
    n = z.shape[0]
    if z.shape != (n, n) or n == 0:
        raise ValueError(f"affinity must be a non-empty square matrix, got shape {z.shape}")
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}")
    if not np.isfinite(z).all():
        raise ValueError("affinity contains NaN or infinite values")
    groups, table = _score_table(z, singleton_score)
    index = {g: i for i, g in enumerate(groups)}
    best_value, best_set, count = -np.inf, (), 0
    if overlapping:
        total = sum(_comb(len(groups), k) for k in range(1, min(max_groups, len(groups)) + 1))
        if total > MAX_OVERLAPPING_SETS:
            raise ValueError(
                f"{total} candidate sets for {n} tasks and {max_groups} groups is too many for the "
                "overlapping search; use overlapping=False (partitions)"
            )
        for k in range(1, min(max_groups, len(groups)) + 1):
            for chunk in _chunks(itertools.combinations(range(len(groups)), k), 200_000):
                combos = np.array(chunk)  # [C, k]
                values = table[combos].max(axis=1).sum(axis=1)  # -inf when a task is uncovered
                count += len(chunk)
                i = int(np.argmax(values))
                if values[i] > best_value + 1e-12:
                    best_value, best_set = float(values[i]), tuple(combos[i])
    else:
        for partition in _partitions(n, max_groups):
            ids = tuple(index[tuple(b)] for b in partition)
            value = float(table[list(ids)].max(axis=0).sum())
            count += 1
            if value > best_value + 1e-12:
                best_value, best_set = value, ids
    chosen = [groups[i] for i in sorted(best_set, key=lambda i: groups[i])]
    served = tuple(
        int(max(range(len(chosen)), key=lambda g: table[index[chosen[g]], t])) for t in range(n)
    )
    return GroupingResult(tuple(chosen), best_value, served, count)


def _comb(n: int, k: int) -> int:
    from math import comb

    return comb(n, k)


def _chunks(iterable: Iterator[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    while chunk := list(itertools.islice(iterable, size)):
        yield chunk
