"""Decode the images of a manifest once, at the evaluation size, and report every bad one.

Decoding is torchvision's (:func:`torchvision.io.decode_image`: JPEG, PNG, GIF, WebP; EXIF
orientation applied), in a few threads (the decoders release the GIL). Each image is resized
so its shorter side is ``image_size`` and centre-cropped to ``image_size`` x ``image_size``
(:func:`eval_geometry`), then kept as ``uint8``: ``N * channels * image_size**2`` bytes in
memory (64 x 64 RGB: 12 KiB an image). A file that cannot be read, is not an image, is
truncated or is empty is a :class:`~mtl_lightning.data.manifest.RowProblem` naming its line
and path; nothing is skipped without being reported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtl_lightning.data.manifest import ManifestRow, RowProblem

__all__ = ["ImageSpec", "channel_stats", "decode_rows", "eval_geometry", "require_torchvision"]

Channels = Literal[1, 3]
#: ImageNet's per-channel mean and std (of images scaled to [0, 1]), for torchvision weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def require_torchvision() -> None:
    """An ``ImportError`` saying how to install torchvision, if it cannot be imported."""
    try:
        import torchvision  # noqa: F401
    except ImportError as error:
        raise ImportError(
            'images need torchvision: pip install "mtl_lightning[vision]" (torchvision '
            f"built for your torch {torch.__version__}); the import failed: {error}"
        ) from error


@dataclass(frozen=True)
class ImageSpec:
    """How images are decoded: ``channels`` (1 grey, 3 RGB) at ``image_size`` pixels square."""

    image_size: int = 64
    channels: Channels = 3

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")

    def params(self) -> dict[str, int]:
        """Plain values, stored in checkpoints and compared when one is restored."""
        return {"image_size": self.image_size, "channels": self.channels}


def eval_geometry(image: Tensor, image_size: int) -> Tensor:
    """Resize the shorter side to ``image_size`` (antialiased), then centre-crop it square.

    Example:
        >>> eval_geometry(torch.zeros(3, 40, 80, dtype=torch.uint8), 20).shape
        torch.Size([3, 20, 20])
    """
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(image, [image_size], antialias=True)
    return TF.center_crop(image, [image_size, image_size])


def _reason(error: Exception) -> str:
    """torchvision's message without its C++ source location."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^.*?\.cpp:\d+,\s*", "", text)


def _decode(row: ManifestRow, spec: ImageSpec) -> tuple[Tensor | None, str | None]:
    from torchvision.io import ImageReadMode, decode_image, read_file

    mode = ImageReadMode.RGB if spec.channels == 3 else ImageReadMode.GRAY
    try:
        if row.file.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        data = read_file(str(row.file))
    except (OSError, RuntimeError) as error:
        return None, f"cannot read the file: {_reason(error)}"
    try:
        image = decode_image(data, mode=mode, apply_exif_orientation=True)
    except (RuntimeError, ValueError) as error:
        return None, f"not a readable image (truncated or corrupt?): {_reason(error)}"
    if image.dtype != torch.uint8:  # 16-bit PNG: scale to 8 bits
        image = (image.float() / 257.0).round().clamp(0, 255).to(torch.uint8)
    if min(image.shape[-2:]) < 1:
        return None, f"image has no pixels ({list(image.shape[-2:])})"
    return eval_geometry(image, spec.image_size).contiguous(), None


def decode_rows(
    rows: Sequence[ManifestRow], spec: ImageSpec, threads: int = 4
) -> tuple[list[Tensor | None], list[RowProblem]]:
    """Every row's image (``uint8`` ``[channels, image_size, image_size]``), ``None`` where it
    cannot be used, and one :class:`RowProblem` for each of those.

    Example:
        >>> import tempfile, pathlib
        >>> from torchvision.io import write_png
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = write_png(torch.zeros(3, 8, 12, dtype=torch.uint8), str(d / "a.png"))
        >>> _ = (d / "b.png").write_bytes(b"not a png")
        >>> rows = [ManifestRow(n, p, d / p, {}, None, None) for n, p in [(2, "a.png"), (3, "b.png")]]
        >>> images, problems = decode_rows(rows, ImageSpec(image_size=4))
        >>> images[0].shape, images[1], [str(p).split(" (")[0] for p in problems]
        (torch.Size([3, 4, 4]), None, ['line 3: b.png: not a readable image'])
    """
    require_torchvision()
    if threads > 1 and len(rows) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(lambda r: _decode(r, spec), rows))
    else:
        results = [_decode(r, spec) for r in rows]
    problems = [
        RowProblem(row.line, row.path, reason)
        for row, (_, reason) in zip(rows, results, strict=True)
        if reason is not None
    ]
    return [image for image, _ in results], problems


def channel_stats(images: Sequence[Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``uint8`` images scaled to [0, 1], in one pass (float64).

    Example:
        >>> a = torch.full((1, 2, 2), 255, dtype=torch.uint8); b = torch.zeros(1, 2, 2, dtype=torch.uint8)
        >>> channel_stats([a, b])
        ([0.5], [0.5])
    """
    if not images:
        raise ValueError("no training images to compute the normalisation statistics from")
    channels = images[0].shape[0]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for image in images:
        x = image.reshape(channels, -1).to(torch.float64) / 255.0
        total += x.sum(dim=1)
        squares += (x * x).sum(dim=1)
        count += x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0.0).sqrt().clamp_min(1e-6)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
