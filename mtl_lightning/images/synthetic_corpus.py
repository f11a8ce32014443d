"""A small labelled "seed quality" image corpus written as PNG/JPEG files plus a manifest CSV.

Each picture is a textured tray seen from above. Where task ``seed`` is ``yes`` it holds a
cut seed half: an ellipse 30-55% of the image across, anywhere, at any angle, with a darker
rim; its interior shows the grade (task ``quality``) by texture and colour together: ``good``
smooth cream with a small darker embryo spot, ``rotten`` brownish with dark blotches, ``raw``
pale green with fine parallel stripes. Trays without a seed hold 0-3 distractors smaller than
a seed (pebbles, blobs, rectangles, some seed-coloured), trays with one 0-2, so detection
needs shape and size, not "is there anything". Random tray colours, lighting, colour casts and
jitter make the classes overlap in mean colour; every pixel gets mild noise. Write one with
``python -m mtl_lightning.images.synthetic_corpus DIR``.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

__all__ = ["GRADES", "ImageCorpusSpec", "draw_image", "write_image_corpus"]

#: The labels of task ``quality`` (labelled only where task ``seed`` is ``yes``).
GRADES = ("good", "rotten", "raw")
_FORMATS = ("png", "jpg")


@dataclass(frozen=True)
class ImageCorpusSpec:
    """Size and labels of a generated seed-quality corpus.

    Args:
        n_images: Number of images.
        size: Side of the square images, in pixels (at least 16).
        seed_rate: Fraction of images that show a cut seed half (exactly
            ``round(seed_rate * n_images)`` of them, at shuffled positions).
        missing_quality: Fraction of the seed images whose ``quality`` cell is left empty
            (an unknown grade; the picture still shows one).
        formats: File formats (``png``, ``jpg``); the images cycle through them.
        seed: Seed of everything.
    """

    n_images: int = 600
    size: int = 64
    seed_rate: float = 0.5
    missing_quality: float = 0.1
    formats: tuple[str, ...] = ("png", "jpg")
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")
        if self.size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {self.size}")
        if not 0.0 <= self.seed_rate <= 1.0:
            raise ValueError(f"seed_rate must be in [0, 1], got {self.seed_rate}")
        if not 0.0 <= self.missing_quality <= 1.0:
            raise ValueError(f"missing_quality must be in [0, 1], got {self.missing_quality}")
        if not self.formats or any(f not in _FORMATS for f in self.formats):
            raise ValueError(f"formats must be a non-empty tuple of {_FORMATS}, got {self.formats}")


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """``[size, size]`` noise: a ``cells x cells`` random grid, smoothly interpolated."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    pos = np.linspace(0.0, cells, size, endpoint=False) + rng.uniform(0.0, 1.0 / cells)
    i0 = np.minimum(pos.astype(int), cells - 1)
    f = pos - i0
    f = f * f * (3.0 - 2.0 * f)  # smoothstep
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _blend(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Paint ``colour`` (``[3]`` or ``[H, W, 3]``) over ``img`` with coverage ``alpha``."""
    return img * (1.0 - alpha[..., None]) + colour * alpha[..., None]


def _coverage(distance: np.ndarray, scale: float) -> np.ndarray:
    """Anti-aliased coverage of ``distance < 1`` (``scale``: pixels per unit of distance)."""
    return np.clip((1.0 - distance) * scale + 0.5, 0.0, 1.0)


def _tray(size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured tray: random base colour, low-frequency blobs and a fine grain."""
    base = rng.uniform(80.0, 160.0) + rng.uniform(-22.0, 22.0, size=3)
    blobs = _smooth_noise(size, 3, rng)[..., None] * rng.uniform(12.0, 28.0)
    tint = _smooth_noise(size, 2, rng)[..., None] * rng.uniform(-8.0, 8.0, size=3)
    grain = _smooth_noise(size, max(4, size // 4), rng)[..., None] * rng.uniform(4.0, 9.0)
    return base + blobs + tint + grain


def _rotate(dx: np.ndarray, dy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets ``dx``, ``dy`` in axes turned by ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, dy * c - dx * s


def _distractor(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pebble, an irregular blob or a rectangle, smaller than a seed, of a random colour."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    radius = size * rng.uniform(0.04, 0.12)
    cx, cy = rng.uniform(radius, size - radius, size=2)
    dx, dy = xx - cx, yy - cy
    kind = rng.integers(3)
    if kind == 0:  # round pebble
        dist = np.hypot(dx, dy) / radius
    elif kind == 1:  # irregular blob: the radius wobbles with the angle
        angle = np.arctan2(dy, dx)
        wobble = 1 + 0.25 * np.sin(rng.integers(2, 5) * angle + rng.uniform(0, 2 * math.pi))
        dist = np.hypot(dx, dy) / (radius * wobble)
    else:  # rotated rectangle
        u, v = _rotate(dx, dy, rng.uniform(0, math.pi))
        dist = np.maximum(np.abs(u) / radius, np.abs(v) / (radius * rng.uniform(0.4, 0.9)))
    grey = np.full(3, rng.uniform(70.0, 200.0))
    brown = rng.uniform((110.0, 75.0, 45.0), (170.0, 120.0, 90.0))
    seed_like = np.array([(230, 220, 190), (150, 110, 70), (190, 215, 160)][rng.integers(3)])
    colour = (grey, brown, seed_like)[rng.integers(3)]
    shade = 1.0 + 0.2 * np.clip(-(dx + dy) / (radius * 1.4), -1.0, 1.0)
    return _blend(img, colour[None, None, :] * shade[..., None], _coverage(dist, radius))


def _interior(
    grade: str, u: np.ndarray, v: np.ndarray, a: float, b: float, rng: np.random.Generator
) -> np.ndarray:
    """``[H, W, 3]`` texture of a seed's cut face (``u``, ``v``: pixels along its axes)."""
    jitter = rng.normal(0.0, 14.0, size=3)
    if grade == "good":  # smooth cream with a small darker embryo spot at one end
        face = np.broadcast_to(np.array([232.0, 222.0, 192.0]) + jitter, u.shape + (3,))
        end = rng.choice([-1.0, 1.0]) * a * rng.uniform(0.45, 0.6)
        spot = np.hypot(u - end, v) / (b * rng.uniform(0.2, 0.28))
        embryo = np.array([185.0, 150.0, 100.0]) + rng.normal(0.0, 10.0, size=3)
        return _blend(face, embryo, _coverage(spot, b * 0.25))
    if grade == "rotten":  # brownish with several dark blotches
        face = np.array([150.0, 108.0, 68.0]) + jitter
        face = face + _smooth_noise(u.shape[0], 4, rng)[..., None] * 10.0
        for _ in range(rng.integers(3, 7)):
            r = rng.uniform(0.0, 0.65)
            t = rng.uniform(0, 2 * math.pi)
            du, dv = u - r * a * math.cos(t), v - r * b * math.sin(t)
            dist = np.hypot(du, dv) / (b * rng.uniform(0.18, 0.32))
            dark = np.array([62.0, 42.0, 28.0]) + rng.normal(0.0, 8.0, size=3)
            face = _blend(face, dark, _coverage(dist, b * 0.3))
        return face
    if grade == "raw":  # pale green with fine parallel stripes
        period = max(2.5, u.shape[0] * rng.uniform(0.05, 0.07))
        t = rng.uniform(0, math.pi)
        phase = 2 * math.pi * (u * math.cos(t) + v * math.sin(t)) / period
        stripes = 0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * math.pi))
        face = np.array([188.0, 214.0, 158.0]) + jitter
        return face - stripes[..., None] * np.array([50.0, 40.0, 50.0])
    raise ValueError(f"grade must be one of {GRADES}, got {grade!r}")


def _seed_half(img: np.ndarray, grade: str, rng: np.random.Generator) -> np.ndarray:
    """A cut seed half: an ellipse of random size, position and orientation, darker rim."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    a = size * rng.uniform(0.15, 0.275)  # semi-major axis: 30-55% of the width across
    b = a * rng.uniform(0.6, 0.85)
    cx, cy = rng.uniform(a * 0.9, size - a * 0.9, size=2)
    u, v = _rotate(xx - cx, yy - cy, rng.uniform(0, math.pi))
    r = np.hypot(u / a, v / b)
    rim = np.array([100.0, 70.0, 42.0]) + rng.normal(0.0, 12.0, size=3)
    inner = 1.0 - rng.uniform(0.12, 0.2)
    face = _interior(grade, u, v, a, b, rng) * (1.0 - 0.12 * np.minimum(r, 1.0) ** 2)[..., None]
    img = _blend(img, rim, _coverage(r, b))
    return _blend(img, face, _coverage(r / inner, b * inner))


def draw_image(
    has_seed: bool, grade: str | None, size: int, rng: np.random.Generator
) -> np.ndarray:
    """One RGB picture, ``[3, size, size]`` uint8: a tray, distractors, maybe a seed half.

    ``grade`` (one of :data:`GRADES`) is needed where ``has_seed`` and ignored elsewhere.
    """
    if has_seed and grade not in GRADES:
        raise ValueError(f"grade must be one of {GRADES} when has_seed, got {grade!r}")
    img = _tray(size, rng)
    for _ in range(rng.integers(0, 3) if has_seed else rng.integers(0, 4)):
        img = _distractor(img, rng)
    if has_seed:
        img = _seed_half(img, str(grade), rng)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    t = rng.uniform(0, 2 * math.pi)  # lighting: a brightness gradient, a level and a colour cast
    light = 1.0 + 0.12 * ((xx - size / 2) * math.cos(t) + (yy - size / 2) * math.sin(t)) / size
    img = img * light[..., None] * rng.uniform(0.8, 1.15) * rng.uniform(0.9, 1.1, size=3)
    img = img + rng.normal(0.0, rng.uniform(3.0, 6.0), size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(2, 0, 1).copy()


def _labels(spec: ImageCorpusSpec, rng: np.random.Generator) -> list[tuple[bool, str | None, str]]:
    """(has seed, drawn grade, quality cell) per image; drawn and labelled grades balanced."""
    n_seed = round(spec.seed_rate * spec.n_images)
    n_missing = round(spec.missing_quality * n_seed)
    labels: list[tuple[bool, str | None, str]] = [(False, None, "n/a")] * spec.n_images
    # the k-th seed image (at a random position) gets grade k % 3, the first ones lose the cell
    for k, i in enumerate(rng.permutation(spec.n_images)[:n_seed]):
        grade = GRADES[k % len(GRADES)]
        labels[i] = (True, grade, "" if k < n_missing else grade)
    return labels


def write_image_corpus(root: str | Path, spec: ImageCorpusSpec | None = None) -> Path:
    """Write images under ``root/images`` and ``root/manifest.csv``; returns the manifest.

    Manifest columns: ``path`` (relative to ``root``), ``seed`` (``yes``/``no``) and
    ``quality`` (a grade of :data:`GRADES` where seed is ``yes``, empty where that grade is
    unknown, the placeholder ``n/a`` where seed is ``no``).

    Example:
        >>> import collections, tempfile
        >>> spec = ImageCorpusSpec(n_images=12, size=32, missing_quality=0.2)
        >>> manifest = write_image_corpus(tempfile.mkdtemp(), spec)
        >>> manifest.read_text().splitlines()[:3]
        ['path,seed,quality', 'images/img_00000.png,yes,raw', 'images/img_00001.jpg,no,n/a']
        >>> rows = list(csv.DictReader(manifest.open()))
        >>> sorted(collections.Counter((r["seed"], r["quality"]) for r in rows).items())
        [(('no', 'n/a'), 6), (('yes', ''), 1), (('yes', 'good'), 1), (('yes', 'raw'), 2), (('yes', 'rotten'), 2)]
    """
    import torch
    from torchvision.io import encode_jpeg, encode_png

    spec = spec or ImageCorpusSpec()
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    streams = np.random.SeedSequence(spec.seed).spawn(spec.n_images + 1)
    labels = _labels(spec, np.random.default_rng(streams[0]))
    encode = {"png": encode_png, "jpg": partial(encode_jpeg, quality=90)}
    rows = []
    for i, (has_seed, grade, cell) in enumerate(labels):
        fmt = spec.formats[i % len(spec.formats)]
        pixels = draw_image(has_seed, grade, spec.size, np.random.default_rng(streams[i + 1]))
        relative = f"images/img_{i:05d}.{fmt}"
        (root / relative).write_bytes(encode[fmt](torch.from_numpy(pixels)).numpy().tobytes())
        rows.append([relative, "yes" if has_seed else "no", cell])
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "seed", "quality"])
        writer.writerows(rows)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """``python -m mtl_lightning.images.synthetic_corpus DIR [--n-images N ...]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--n-images", type=int, default=ImageCorpusSpec.n_images)
    parser.add_argument("--size", type=int, default=ImageCorpusSpec.size)
    parser.add_argument("--seed-rate", type=float, default=ImageCorpusSpec.seed_rate)
    parser.add_argument("--missing-quality", type=float, default=ImageCorpusSpec.missing_quality)
    parser.add_argument("--seed", type=int, default=ImageCorpusSpec.seed)
    kwargs = vars(parser.parse_args(argv))  # every option is a field of ImageCorpusSpec
    root = kwargs.pop("root")
    print(write_image_corpus(root, ImageCorpusSpec(**kwargs)))


if __name__ == "__main__":
    main()
