"""Features for :class:`~mtl_lightning.data.audio.AudioFeatureDataModule`: extraction into the
cache, the rows whose features cannot be used, and the normalisation statistics.

Features are computed once per file and parameter set, in ``num_extract_workers`` processes,
into an on-disk cache keyed by (path, size, mtime, parameters) with atomic writes: a killed
extraction resumes where it stopped (:func:`~mtl_lightning.audio.parallel.extract_all`).
``.npy`` / ``.pt`` files in the path column are precomputed features ``[n_features, frames]``,
used as they are.

Bad rows (missing file, unreadable, empty or too short audio, any other failure to compute a
file's features, missing label, a label the restored vocabulary does not know, unknown split
value, non-finite or malformed precomputed features, a feature count unlike the other files')
raise one :class:`~mtl_lightning.data.manifest.ManifestError` listing every one with its CSV
line, or with ``on_error="skip"`` are left out with a warning that counts and lists them.

Normalisation (:class:`~mtl_lightning.data.normalize.FeatureNorm`): statistics of the training
split, or a checkpoint's (new speakers then get their own ``per_speaker`` statistics).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from mtl_lightning.audio.extractor import FeatureSpec
from mtl_lightning.audio.parallel import ExtractionResult, extract_all
from mtl_lightning.data.audio_plan import Plan
from mtl_lightning.data.manifest import RowProblem
from mtl_lightning.data.normalize import FeatureNorm
from mtl_lightning.data.vocab import LabelVocab

__all__ = ["extract_features", "log_extraction", "prepare_norm", "unknown_labels"]

log = logging.getLogger(__name__)


def extract_features(
    plan: Plan,
    spec: FeatureSpec,
    cache_dir: Path,
    workers: int,
    progress: bool,
    extract: Callable[..., ExtractionResult] = extract_all,
) -> tuple[ExtractionResult, list[RowProblem]]:
    """Features of every planned row (from the cache where they are there), and the bad rows:
    the plan's, the files that failed, and those whose feature count differs from the others'
    (their features are set to ``None``). ``extract`` computes them: into the per-file cache
    (:func:`~mtl_lightning.audio.parallel.extract_all`), or into shards
    (:func:`~mtl_lightning.data.shards.write_shards`, whose handles have a ``shape`` too)."""
    result = extract([r.file for r in plan.rows], spec, cache_dir, workers, progress)
    problems = list(plan.problems)
    problems += [
        RowProblem(plan.rows[i].line, plan.rows[i].path, e) for i, e in result.errors.items()
    ]
    shapes = Counter(x.shape[0] for x in result.features if x is not None)
    if len(shapes) > 1:
        expected = shapes.most_common(1)[0][0]
        for i, x in enumerate(result.features):
            if x is not None and x.shape[0] != expected:
                problems.append(
                    RowProblem(
                        plan.rows[i].line,
                        plan.rows[i].path,
                        f"{x.shape[0]} feature rows, the others have {expected}",
                    )
                )
                result.features[i] = None
    return result, problems


def unknown_labels(
    manifest: Path,
    plan: Plan,
    vocab: LabelVocab,
    label_columns: Sequence[str],
    features: list[Tensor | None],
) -> list[RowProblem]:
    """Rows (with features) labelled with a class the vocabulary does not have: bad rows,
    whose features are dropped, in fit/validate/test; in predict labels are not used."""
    reasons: dict[int, list[str]] = {}
    for t in label_columns:
        names = vocab.names.get(t, [])
        known = set(names)
        for i, v in enumerate(plan.labels[t]):
            if v is not None and v not in known and features[i] is not None:
                listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                reasons.setdefault(i, []).append(
                    f"{t} label {v!r} is not a class of the model (vocabulary: {listed})"
                )
    if plan.predict:
        if reasons:
            log.warning(
                "%s: %d row(s) have labels the vocabulary does not know; predict ignores them",
                manifest,
                len(reasons),
            )
        return []
    for i in reasons:
        features[i] = None
    return [
        RowProblem(plan.rows[i].line, plan.rows[i].path, "; ".join(r))
        for i, r in sorted(reasons.items())
    ]


def log_extraction(result: ExtractionResult, skipped: int) -> None:
    """One line: computed (and their audio duration), from cache, precomputed, skipped."""
    log.info(
        "features: %d computed (%.1f s of audio), %d from cache, %d precomputed, %d skipped",
        result.computed,
        result.seconds,
        result.cached,
        result.precomputed,
        skipped,
    )


def prepare_norm(
    norm: FeatureNorm,
    features: Sequence[Tensor | None],
    speakers: Sequence[str | None],
    members: Mapping[str, list[int]],
    restored: Mapping[str, Any] | None,
    predict: bool,
) -> None:
    """Statistics for ``norm``: a checkpoint's (``restored["norm"]``, plus those of speakers it
    lacks), else the training split's (``members["train"]``; per-speaker ones from val and
    test too). Predicting without either leaves ``norm`` as it is (it says so when used)."""
    if restored is not None:
        norm.load_state_dict(restored["norm"])
        used = [i for i, x in enumerate(features) if x is not None]
        norm.add_speakers([features[i] for i in used], [speakers[i] for i in used])  # type: ignore[misc]
    elif members["train"] and not (predict and norm.fitted):
        rest = members["val"] + members["test"]
        norm.fit(
            [features[i] for i in members["train"]],  # type: ignore[misc]
            [speakers[i] for i in members["train"]],
            [features[i] for i in rest],  # type: ignore[misc]
            [speakers[i] for i in rest],
        )
