"""Grouping search against brute force on small matrices."""

import itertools

import numpy as np
import pytest

from mtl_lightning.affinity import group_score, search_groups


def value(z, groups, singleton=0.0):
    n = z.shape[0]
    total = 0.0
    for t in range(n):
        scores = [group_score(z, g, t, singleton) for g in groups if t in g]
        if not scores:
            return -np.inf
        total += max(scores)
    return total


def brute_overlapping(z, max_groups):
    n = z.shape[0]
    subsets = [s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)]
    return max(
        value(z, combo)
        for k in range(1, max_groups + 1)
        for combo in itertools.combinations(subsets, k)
    )


def brute_partition(z, max_groups):
    n = z.shape[0]
    best = -np.inf
    for labels in itertools.product(range(max_groups), repeat=n):
        groups = [tuple(i for i in range(n) if labels[i] == g) for g in range(max_groups)]
        best = max(best, value(z, [g for g in groups if g]))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_groups", [1, 2, 3])
def test_search_matches_brute_force(seed, max_groups):
    z = np.random.default_rng(seed).normal(size=(4, 4))
    over = search_groups(z, max_groups)
    assert over.score == pytest.approx(brute_overlapping(z, max_groups))
    assert value(z, over.groups) == pytest.approx(over.score)
    assert len(over.groups) <= max_groups
    part = search_groups(z, max_groups, overlapping=False)
    assert part.score == pytest.approx(brute_partition(z, max_groups))
    assert sorted(i for g in part.groups for i in g) == [0, 1, 2, 3]
    assert part.score <= over.score + 1e-12


def test_recovers_planted_blocks():
    z = -0.1 * np.ones((6, 6))
    for block in [(0, 1, 2), (3, 4), (5,)]:
        for i in block:
            for j in block:
                z[i, j] = 0.5
    result = search_groups(z, 3)
    assert result.groups == ((0, 1, 2), (3, 4), (5,))
    assert result.served_by == (0, 0, 0, 1, 1, 2)
    assert result.score == pytest.approx(2.5)


def test_cost_is_the_number_of_candidate_sets():
    assert search_groups(np.eye(5), 3).candidates == 31 + 465 + 4495
    assert search_groups(np.eye(5), 3, overlapping=False).candidates == 1 + 15 + 25  # S(5, k)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        search_groups(np.ones((2, 3)), 2)
    with pytest.raises(ValueError):
        search_groups(np.eye(3), 0)
    with pytest.raises(ValueError):
        search_groups(np.array([[np.nan]]), 1)
