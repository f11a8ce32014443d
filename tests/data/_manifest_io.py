"""Read and write manifest CSV rows in the audio tests."""

from __future__ import annotations

import csv
from pathlib import Path


def read_rows(manifest: Path) -> list[dict[str, str]]:
    """The manifest's rows as dicts (column -> cell)."""
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(
    manifest: Path, rows: list[dict[str, str]], columns: list[str] | None = None
) -> Path:
    """Write ``rows`` (only ``columns`` when given) as a manifest; returns its path."""
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns or list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return manifest
