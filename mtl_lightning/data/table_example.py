"""`write_example_table`: a CSV like the five-task user's (20 features, five label columns)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_example_table"]


def write_example_table(path: str | Path, n: int = 600, seed: int = 0) -> Path:
    """Write a CSV with features ``x0..x19`` and labels ``y1..y5`` (3, 2, 4, 2, 3 classes).

    The labels have planted structure (:class:`~mtl_lightning.data.SyntheticTabularDataModule`:
    ``y1``/``y2`` and ``y3``/``y4`` share latent factors, ``y5`` conflicts with ``y1``), so a
    model can learn them.

    Example:
        >>> import tempfile
        >>> p = write_example_table(f"{tempfile.mkdtemp()}/t.csv", n=30)
        >>> lines = p.read_text().splitlines(); len(lines), lines[0].split(",")[-6:]
        (31, ['x19', 'y1', 'y2', 'y3', 'y4', 'y5'])
    """
    from mtl_lightning.data.tabular import SyntheticTabularDataModule

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    data = SyntheticTabularDataModule(n_features=20, n_train=n, n_eval=1, seed=seed)
    made = data._make(n, seed * 1009 + 1)
    labels = [made.targets[f"t{k}"] for k in range(1, 6)]
    header = [f"x{j}" for j in range(20)] + [f"y{k}" for k in range(1, 6)]
    rows = [",".join(header)]
    for i in range(n):
        cells = [f"{float(v):.6g}" for v in made.features[i]] + [str(int(y[i])) for y in labels]
        rows.append(",".join(cells))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path
