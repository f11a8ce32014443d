"""Acceptance check of the planted five-task data: within- vs cross-group affinity per epoch.

Run after ``python -m mtl_lightning fit --config configs/five_task_affinity.yaml``:
``python benchmarks/affinity_acceptance.py lightning_logs/version_N/affinity.json``. Prints a
markdown table (mean off-diagonal affinity within the planted groups vs across them, per epoch)
and the groups found by the search (``--max-groups 3``, affinity averaged over epochs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mtl_lightning.affinity import search_groups
from mtl_lightning.groups import load_affinity

PLANTED = [["t1", "t2"], ["t3", "t4"], ["t5"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("affinity")
    p.add_argument("--max-groups", type=int, default=3)
    args = p.parse_args()

    data = json.loads(Path(args.affinity).read_text())
    tasks = data["tasks"]
    group_of = {t: gi for gi, g in enumerate(PLANTED) for t in g}
    ok = True
    print("| epoch | within-group mean | cross-group mean | within > cross |")
    print("|---|---|---|---|")
    for e in data["epochs"]:
        z = np.asarray(e["affinity"])
        pairs = [(i, j) for i in range(len(tasks)) for j in range(len(tasks)) if i != j]
        within = [z[i, j] for i, j in pairs if group_of[tasks[i]] == group_of[tasks[j]]]
        cross = [z[i, j] for i, j in pairs if group_of[tasks[i]] != group_of[tasks[j]]]
        better = float(np.mean(within)) > float(np.mean(cross))
        ok &= better or e["epoch"] == 0
        print(f"| {e['epoch']} | {np.mean(within):+.5f} | {np.mean(cross):+.5f} | {better} |")
    _, mean = load_affinity(args.affinity)
    found = search_groups(mean, args.max_groups).named(tasks)
    print(f"\ngroups found: {found}; planted: {PLANTED}; recovered: {found == PLANTED}")
    print(f"acceptance: {'PASS' if ok and found == PLANTED else 'FAIL'}")


if __name__ == "__main__":
    main()
