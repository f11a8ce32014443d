"""Compute features of many files once, in parallel worker processes, into a :class:`FeatureCache`."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from mtl_lightning.audio.cache import FeatureCache
from mtl_lightning.audio.decode import AudioDecodeError
from mtl_lightning.audio.extractor import PRECOMPUTED_SUFFIXES, FeatureSpec, load_precomputed

__all__ = ["ExtractionResult", "extract_all"]


@dataclass
class ExtractionResult:
    """Features per input file (``None`` where it failed), the failures and what was computed.

    Attributes:
        features: One ``[n_features, frames]`` tensor per path, or ``None``.
        errors: ``{position: reason}`` for the files that failed.
        computed: Files computed in this call (cache misses).
        cached: Files read from the cache (hits).
        precomputed: ``.npy`` / ``.pt`` files loaded as they are.
        seconds: Audio duration of the computed files (for the real-time factor).
    """

    features: list[torch.Tensor | None]
    errors: dict[int, str] = field(default_factory=dict)
    computed: int = 0
    cached: int = 0
    precomputed: int = 0
    seconds: float = 0.0


def _reason(path: Path, err: Exception) -> str:
    return str(err).removeprefix(f"{path}: ")


def _compute_one(spec: FeatureSpec, cache: FeatureCache, path: Path) -> tuple[str | None, float]:
    """Fill the cache entry of ``path`` (in a worker); returns ``(error, audio_seconds)``."""
    if not path.is_file():  # the cache key needs the file's size and mtime
        return "file not found", 0.0
    try:
        features = cache.get_or_compute(path, spec.extract)
    except AudioDecodeError as err:
        return _reason(path, err), 0.0
    except (ImportError, MemoryError):  # the environment, not this file: stop the run
        raise
    except Exception as err:  # anything else one file triggers is that file's bad row
        return f"feature extraction failed ({type(err).__name__}: {_reason(path, err)})", 0.0
    seconds = features.shape[-1] * spec.hop_length / spec.sample_rate
    return None, seconds if spec.kind != "egemaps" else features.shape[-1] * 0.01


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; no oversubscription


def extract_all(
    paths: Sequence[Path],
    spec: FeatureSpec,
    cache_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
) -> ExtractionResult:
    """Features of every path: cache hits are read, misses computed by ``workers`` processes.

    Each computed entry is written atomically by :class:`FeatureCache`, so a run killed during
    extraction keeps every finished file and a rerun computes only the rest. Failures (missing,
    unreadable, empty, too short or non-finite input, or any other error computing one file's
    features) do not stop the others; they come back in ``errors``. A missing extra
    (``ImportError``) and ``MemoryError`` still stop the run.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> result = extract_all([d / "gone.wav"], FeatureSpec(), d / "cache", progress=False)
        >>> result.features, result.errors
        ([None], {0: 'file not found'})
    """
    cache = FeatureCache(cache_dir, spec.params())
    cache.remove_stale_temp_files()  # half-written entries of a killed earlier run
    result = ExtractionResult(features=[None] * len(paths))
    todo: list[int] = []
    for i, path in enumerate(paths):
        if path.suffix.lower() in PRECOMPUTED_SUFFIXES:
            try:
                result.features[i] = load_precomputed(path)
                result.precomputed += 1
            except AudioDecodeError as err:
                result.errors[i] = _reason(path, err)
            continue
        hit = cache.load(path) if path.is_file() else None
        if hit is not None:
            result.features[i] = hit
            result.cached += 1
        else:
            todo.append(i)
    if not todo:
        return result
    bar = _progress_bar(len(todo), spec.kind, progress)
    if workers <= 1:
        for i in todo:
            error, seconds = _compute_one(spec, cache, paths[i])
            _record(result, cache, paths, i, error, seconds)
            bar.update(1)
    else:
        methods = mp.get_all_start_methods()
        context = mp.get_context("fork" if "fork" in methods else "spawn")
        chunk = max(1, len(todo) // (8 * workers))  # fewer round trips, still balanced
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            job = partial(_compute_one, spec, cache)
            done = pool.map(job, [paths[i] for i in todo], chunksize=chunk)
            for i, (error, seconds) in zip(todo, done, strict=True):
                _record(result, cache, paths, i, error, seconds)
                bar.update(1)
    bar.close()
    return result


def _record(
    result: ExtractionResult,
    cache: FeatureCache,
    paths: Sequence[Path],
    i: int,
    error: str | None,
    seconds: float,
) -> None:
    if error is not None:
        result.errors[i] = error
        return
    result.features[i] = torch.load(cache.path_for(paths[i]), weights_only=True)
    result.computed += 1
    result.seconds += seconds


def _progress_bar(total: int, kind: str, enabled: bool):  # noqa: ANN202 - tqdm's own type
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"extracting {kind}", unit="file", disable=not enabled)
