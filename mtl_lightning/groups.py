"""`python -m mtl_lightning groups`: TAG task grouping from a saved affinity file."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtl_lightning.affinity import GroupingResult, search_groups


def load_affinity(path: str | Path, epochs: str = "all") -> tuple[list[str], np.ndarray]:
    """Task names and the affinity matrix of a ``TaskAffinity`` JSON file.

    ``epochs="all"`` averages every epoch's matrix (TAG averages over training), ``"last"`` takes
    the final one. A plain ``{"tasks": [...], "affinity": [[...]]}`` file is accepted too.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "a.json")
        >>> _ = open(f, "w").write('{"tasks": ["a", "b"], "epochs": ['
        ...     '{"affinity": [[1, 0.2], [0.4, 1]]}, {"affinity": [[1, 0.4], [0.0, 1]]}]}')
        >>> load_affinity(f)[1].tolist(), load_affinity(f, "last")[1].tolist()
        ([[1.0, 0.30000000000000004], [0.2, 1.0]], [[1.0, 0.4], [0.0, 1.0]])

    A pair not measured in an epoch (``null``) is averaged over the epochs that measured it.
    """
    data = json.loads(Path(path).read_text())
    tasks = list(data["tasks"])
    if "epochs" in data:
        # a pair with no labelled samples in an epoch is null there (NaN here)
        mats = [np.asarray(e["affinity"], dtype=float) for e in data["epochs"]]
        if not mats:
            raise ValueError(f"{path}: no epochs recorded")
        stack = np.stack(mats[-1:] if epochs == "last" else mats)
        measured = ~np.isnan(stack)
        matrix = np.where(measured, stack, 0.0).sum(0) / np.maximum(measured.sum(0), 1)
        matrix[~measured.any(0)] = np.nan
    else:
        matrix = np.asarray(data["affinity"], dtype=float)
    if matrix.shape != (len(tasks), len(tasks)):
        raise ValueError(f"{path}: affinity shape {matrix.shape} does not match {len(tasks)} tasks")
    missing = [
        f"{tasks[i]}->{tasks[j]}" for i, j in zip(*np.nonzero(np.isnan(matrix)), strict=True)
    ]
    if missing:
        raise ValueError(
            f"{path}: affinity never measured for {missing} (no batch with labels for both "
            "tasks); grouping needs every pair"
        )
    return tasks, matrix


def format_grouping(tasks: Sequence[str], result: GroupingResult) -> str:
    """Human-readable grouping: one line per group, each task's serving group, the search cost."""
    lines = [f"best {len(result.groups)} group(s), total score {result.score:.6g}:"]
    for i, group in enumerate(result.named(tasks)):
        served = [tasks[t] for t in range(len(tasks)) if result.served_by[t] == i]
        lines.append(f"  group {i + 1}: {', '.join(group)}  (serves {', '.join(served) or '-'})")
    lines.append(f"searched {result.candidates} candidate sets exhaustively")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The ``groups`` subcommand's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m mtl_lightning groups",
        description="Choose task groups from inter-task affinity (TAG network selection).",
    )
    p.add_argument("--affinity", required=True, help="affinity.json written by TaskAffinity")
    p.add_argument("--max-groups", type=int, default=2, help="most groups (networks) allowed")
    p.add_argument("--epochs", choices=["all", "last"], default="all", help="average or last")
    p.add_argument(
        "--partition", action="store_true", help="each task in exactly one group (faster)"
    )
    p.add_argument("--singleton-score", type=float, default=0.0, help="score of a lone task")
    p.add_argument("--output", help="also write the result as JSON here")
    return p


def run(argv: Sequence[str]) -> GroupingResult:
    """Parse ``argv``, search, print the grouping and optionally save it."""
    args = parser().parse_args(list(argv))
    tasks, matrix = load_affinity(args.affinity, args.epochs)
    result = search_groups(
        matrix,
        args.max_groups,
        overlapping=not args.partition,
        singleton_score=args.singleton_score,
    )
    print(format_grouping(tasks, result))
    if args.output:
        Path(args.output).write_text(
            json.dumps(
                {
                    "groups": result.named(tasks),
                    "score": result.score,
                    "served_by": {tasks[t]: g for t, g in enumerate(result.served_by)},
                    "candidates": result.candidates,
                },
                indent=1,
            )
        )
    return result
