"""Label checks shared by the audio manifest and the tabular files: rare and near-duplicate labels.

A label seen in very few rows, or one that is almost another (``happ`` / ``happy``, ``Happy `` /
``happy``, ``nuetral`` / ``neutral``) is usually a typo that would become a class of its own.
Two labels are near duplicates when they are equal after case and whitespace folding, or, after
folding, one edit (insertion, deletion, substitution or a swap of neighbours) apart. The edit
rule is skipped for labels that are numbers or shorter than 4 characters (``1`` / ``2``,
``no`` / ``na``) and for labels that differ only in their digits (``spk01`` / ``spk02``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

__all__ = ["LabelPlaces", "fold_label", "label_problems", "near_duplicate"]

_MAX_LINES = 8


def fold_label(label: str) -> str:
    """Case- and whitespace-folded label: ``" Happy  Face"`` -> ``"happy face"``.

    Example:
        >>> fold_label("  Happy  Face ")
        'happy face'
    """
    return " ".join(label.split()).casefold()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` (different) are one insertion, deletion, substitution or swap apart."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) == 1:
            return True
        i, j = (diff + [-1, -1])[:2]
        return len(diff) == 2 and j == i + 1 and a[i] == b[j] and a[j] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def near_duplicate(a: str, b: str) -> bool:
    """Whether two different labels look like one label written two ways (see the module doc).

    Example:
        >>> near_duplicate("Happy ", "happy"), near_duplicate("nuetral", "neutral")
        (True, True)
        >>> near_duplicate("happ", "happy"), near_duplicate("1", "2"), near_duplicate("spk01", "spk02")
        (True, False, False)
    """
    if a == b:
        return False
    fa, fb = fold_label(a), fold_label(b)
    if fa == fb:
        return True
    if min(len(fa), len(fb)) < 4 or _is_number(fa) or _is_number(fb):
        return False
    strip = lambda s: "".join(c for c in s if not c.isdigit())  # noqa: E731
    if strip(fa) == strip(fb):
        return False
    return _one_edit(fa, fb)


def _lines(lines: Sequence[int | str], count: int | None = None) -> str:
    """``"line(s) 2, 3"`` for line numbers, the places as given otherwise (``"row 4"``);
    ``count``: the label's rows when ``lines`` holds only the first of them."""
    head = ", ".join(str(n) for n in lines[:_MAX_LINES])
    more = (len(lines) if count is None else count) - _MAX_LINES
    kind = "line(s) " if all(isinstance(n, int) for n in lines) else ""
    return kind + head + (f", ... ({more} more)" if more > 0 else "")


class LabelPlaces:
    """Per label, its number of rows and the first places where it is: what
    :func:`label_problems` reports, gathered a block of rows at a time (memory per label, not
    per row).

    Example:
        >>> places = LabelPlaces()
        >>> places.add(["happy", None, "Happy "], [2, 3, 4]); places.add(["happy"], [5])
        >>> places.problems("emotion", min_count=2)[0]
        "emotion: label 'Happy ' is seen in 1 row(s) (fewer than min_label_count 2): line(s) 4"
    """

    def __init__(self) -> None:
        self.count: dict[str, int] = defaultdict(int)
        self.first: dict[str, list[int | str]] = defaultdict(list)

    def add(self, labels: Sequence[str | None], lines: Sequence[int | str]) -> None:
        """Count ``labels`` (``None`` = missing, not counted), one per row at ``lines``."""
        for label, line in zip(labels, lines, strict=True):
            if label is not None:
                self.count[label] += 1
                if len(self.first[label]) < _MAX_LINES:
                    self.first[label].append(line)

    def problems(self, task: str, min_count: int = 2, near_duplicates: bool = True) -> list[str]:
        """One message per rare label and per pair of near-duplicate labels of ``task``."""
        messages = [
            f"{task}: label {label!r} is seen in {n} row(s) (fewer than min_label_count "
            f"{min_count}): {_lines(self.first[label], n)}"
            for label, n in sorted(self.count.items())
            if n < min_count
        ]
        if near_duplicates:
            for a, b in _candidate_pairs(sorted(self.count)):
                if near_duplicate(a, b):
                    messages.append(
                        f"{task}: labels {a!r} and {b!r} look like one label written two ways: "
                        f"{a!r} at {self._at(a)}; {b!r} at {self._at(b)}"
                    )
        return messages

    def _at(self, label: str) -> str:
        return _lines(self.first[label], self.count[label])


def label_problems(
    task: str,
    labels: Sequence[str | None],
    lines: Sequence[int | str],
    min_count: int = 2,
    near_duplicates: bool = True,
) -> list[str]:
    """One message per rare label and per pair of near-duplicate labels of ``task``.

    Args:
        task: Task (or column) name, for the messages.
        labels: One label per row (``None`` = missing, not checked).
        lines: Where each row is (its CSV line, or ``"row 3 of a.parquet"``), for the messages.
        min_count: A label seen in fewer rows is reported (``1`` or less: never).
        near_duplicates: Report near-duplicate pairs.

    Example:
        >>> label_problems("emotion", ["happy", "happy", "Happy ", "sad", "sad"], [2, 3, 4, 5, 6])
        ["emotion: label 'Happy ' is seen in 1 row(s) (fewer than min_label_count 2): line(s) 4", "emotion: labels 'Happy ' and 'happy' look like one label written two ways: 'Happy ' at line(s) 4; 'happy' at line(s) 2, 3"]
    """
    places = LabelPlaces()
    places.add(labels, lines)
    return places.problems(task, min_count, near_duplicates)


def _candidate_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of names sharing their folded form or a one-deletion variant of it: every pair
    within one edit (or one swap) does, so the check is linear in the number of labels."""
    buckets: dict[str, list[int]] = defaultdict(list)
    for k, name in enumerate(names):
        folded = fold_label(name)
        for key in {folded, *(folded[:i] + folded[i + 1 :] for i in range(len(folded)))}:
            buckets[key].append(k)
    pairs = {(i, j) for ks in buckets.values() for i in ks for j in ks if i < j}
    return [(names[i], names[j]) for i, j in sorted(pairs)]
