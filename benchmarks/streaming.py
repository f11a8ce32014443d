"""Streaming audio features (LitData shards) against the in-memory datamodule.

Measures, in one run (ratios within the run):

* **peak RSS at 1x and 10x the corpus**: a generated corpus of precomputed log-mel-like
  features (``.npy``, 40 x 100-400 frames float32; emotion x speaker labels, balanced), 1x
  about 92 MB and 10x about 920 MB. For each of :class:`~mtl_lightning.data.AudioFeatureDataModule`
  (in memory) and :class:`~mtl_lightning.data.StreamingAudioFeatureDataModule` (shards of 4 MB
  chunks written beforehand, so the measured process only reads them) at each size, a fresh
  process imports everything, runs ``setup("fit")`` and one epoch of the training and of the
  validation loader (whole utterances, batch 32), and reports its peak RSS and its RSS right
  after the imports; the peak of the data part (setup and epochs) less the latter is the data's
  RSS. Peaks are ``VmHWM`` of ``/proc/self/status``, reset after the imports: the ``ru_maxrss``
  of a process started by ``subprocess`` is at least its parent's peak. Targets: streaming
  grows by < 10% from 1x to 10x, in memory ~10x (its data part).
* **training step time**: the default :class:`~mtl_lightning.MultiTaskModule` (one copy per
  loader, same initial weights) trained step by step on batches of the in-memory and of the
  streaming loader alternately (1x corpus, whole utterances with the mask, one torch thread);
  each step is timed from the batch fetch to the end of the optimizer step. Target: streaming's
  median within 10% of the in-memory one.
* **shard writing speed**: a generated WAV/FLAC corpus (~10 min of audio) extracted (log-mel,
  40 bands, 2 worker processes) into empty shards, in hours of audio per minute of wall time,
  against the in-memory path's extraction into an empty per-file cache in the same run.

Run: ``python -m benchmarks --only streaming`` (with the machine line and the table), or
``python -m benchmarks.streaming [--tiny]`` (the rows as JSON lines).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

warnings.filterwarnings("ignore")

NAME = "streaming"
ROOT = Path(__file__).resolve().parent.parent
N_FEATURES = 40
#: chunk size of the shards: the chunk cache then holds (4 lanes * 4 + 2) * 4 MB = 72 MB at
#: most, less than the 1x corpus (the default 16 MB would hold all of it, and 288 MB at 10x)
CHUNK_BYTES = "4MB"
EMOTIONS = ("neutral", "happy", "sad", "angry")
SPEAKERS = 8
KINDS = ("in-memory", "streaming")
Row = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """How big one run is."""

    utterances: int  # of the 1x corpus (10x has ten times as many)
    steps: int  # timed training steps per loader
    warmup: int  # untimed steps before them
    per_pair: int  # audio utterances per (speaker, emotion) for the writing speed
    trials: int  # alternating writing trials (the median is reported)


FULL = Sizes(utterances=2400, steps=40, warmup=3, per_pair=25, trials=3)
TINY = Sizes(utterances=64, steps=2, warmup=1, per_pair=1, trials=1)


def _ru_maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # KiB on Linux


def _rss_mib() -> tuple[float, float]:
    """This process's ``(current, peak)`` resident memory in MiB.

    Read from ``/proc/self/status`` (``VmRSS``, ``VmHWM``) where there is one: a process
    started by ``subprocess`` (vfork + exec) inherits its parent's peak in ``ru_maxrss``, which
    would then be the parent's; elsewhere ``ru_maxrss`` for both.
    """
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return _ru_maxrss_mib(), _ru_maxrss_mib()
    kib = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            kib[key] = int(value.split()[0])
    return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024


def _reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0; False elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _cpu_seconds() -> float:
    """CPU time of this process and of its reaped child processes."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_features(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` precomputed feature files ``[40, 100..400]`` float32 in ``folder``: their manifest
    rows ``path,emotion,speaker`` (every 32 consecutive rows hold each pair once)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    bands = np.linspace(-8.0, -2.0, N_FEATURES, dtype=np.float32)[:, None]  # log-mel-like
    rows = []
    for i in range(n):
        frames = int(rng.integers(100, 401))
        x = rng.standard_normal((N_FEATURES, frames), dtype=np.float32) + bands
        name = f"utt{i:06d}.npy"
        np.save(folder / name, x)
        rows.append(f"{name},{EMOTIONS[i % len(EMOTIONS)]},spk{(i // 4) % SPEAKERS:02d}")
    return rows


def write_manifest(path: Path, rows: list[str]) -> Path:
    path.write_text("path,emotion,speaker\n" + "\n".join(rows) + "\n")
    return path


def make_datamodule(kind: str, manifest: str, store: str, workers: int = 1) -> Any:
    """The datamodule of ``kind`` (``in-memory``: cache in ``store``; ``streaming``: shards in
    ``store``) on whole utterances, batch 32."""
    from mtl_lightning.data import AudioFeatureDataModule, StreamingAudioFeatureDataModule

    common: dict[str, Any] = dict(
        adversarial=["speaker"],
        n_mels=N_FEATURES,
        crop_frames=None,
        batch_size=32,
        progress=False,
        num_extract_workers=workers,
    )
    if kind == "in-memory":
        return AudioFeatureDataModule(manifest, cache_dir=store, **common)
    return StreamingAudioFeatureDataModule(
        manifest, shard_dir=store, chunk_bytes=CHUNK_BYTES, **common
    )


def child(kind: str, manifest: str, store: str) -> dict[str, Any]:
    """In a fresh process: RSS after the imports, and the peak RSS of setup + one training and
    one validation epoch (the peak is reset to the current RSS after the imports, so that it is
    the data part's own, whatever the imports or the parent peaked at)."""
    import lightning  # noqa: F401  (every import first, the same for both kinds)
    import litdata  # noqa: F401
    import torch
    from litdata.streaming.sampler import ChunkedIndex  # noqa: F401

    from mtl_lightning.data import shards

    torch.set_num_threads(1)
    after_imports, imports_peak = _rss_mib()
    reset = _reset_peak()
    start = time.perf_counter()
    dm = make_datamodule(kind, manifest, store)
    dm.setup("fit")
    after_setup = _rss_mib()[1]
    batches = sum(1 for loader in (dm.train_dataloader(), dm.val_dataloader()) for _ in loader)
    data_peak = _rss_mib()[1]
    return {
        "after_imports": after_imports,
        "imports_peak": imports_peak,
        "after_setup": after_setup,
        "data_peak": data_peak,
        "peak": max(data_peak, imports_peak),
        "reset": reset,
        "ru_maxrss": _ru_maxrss_mib(),
        "seconds": time.perf_counter() - start,
        "batches": batches,
        "rows": len(dm.datasets["all"]),
        "decoded": shards._CACHE.decoded,
        "computed": dm.extraction.computed,
    }


def _spawn(kind: str, manifest: Path, store: Path) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks.streaming", "--child", kind, str(manifest)]
    proc = subprocess.run(args + [str(store)], cwd=ROOT, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} child for {manifest.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def measure_rss(
    root: Path, n: int, in_process: bool = False
) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(kind, scale): child report}`` for both kinds at 1x (``n`` files) and 10x;
    ``in_process`` (the tiny smoke run): in this process, without the ~10 s of imports of a
    fresh one each (the memory figures then mean nothing)."""
    rows = write_features(root / "features", 10 * n)
    manifests = {s: write_manifest(root / "features" / f"{s}x.csv", rows[: s * n]) for s in (1, 10)}
    stores = {
        (k, s): root / f"{'cache' if k == 'in-memory' else 'shards'}-{s}x"
        for k in KINDS
        for s in (1, 10)
    }
    for s, manifest in manifests.items():  # the measured processes only read the shards
        make_datamodule("streaming", str(manifest), str(stores["streaming", s])).prepare_data()
    jobs = list(stores)
    if in_process:
        return {j: child(j[0], str(manifests[j[1]]), str(stores[j])) for j in jobs}
    with ThreadPoolExecutor(2) as pool:  # two at a time on 2 cores: RSS is per process
        found = pool.map(lambda j: _spawn(j[0], manifests[j[1]], stores[j]), jobs)
        reports = dict(zip(jobs, found, strict=True))
    for (kind, _), r in reports.items():
        if kind == "streaming" and r["computed"]:
            raise RuntimeError("the measured streaming process wrote shards")
    return reports


def step_times(manifest: Path, shard_dir: Path, sizes: Sizes) -> dict[str, list[list[float]]]:
    """``{kind: [fetch seconds, step seconds]}`` per timed step, the two loaders alternating."""
    from benchmarks._interleave import timed_steps
    from mtl_lightning import MultiTaskModule

    datamodules = {}
    for kind in KINDS:
        store = shard_dir if kind == "streaming" else shard_dir.with_name("cache-steps")
        datamodules[kind] = make_datamodule(kind, str(manifest), str(store))
    return timed_steps(datamodules, MultiTaskModule, sizes.warmup, sizes.steps)


def writing_speed(root: Path, sizes: Sizes) -> dict[str, tuple[float, float, float]]:
    """``{kind: (audio seconds, median wall seconds, median CPU seconds)}`` of ``prepare_data``
    into an empty cache (in memory) or empty shards (streaming), 2 workers, trials alternating
    (which kind goes first too)."""
    from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus

    spec = CorpusSpec(speakers=SPEAKERS, emotions=len(EMOTIONS), per_pair=sizes.per_pair)
    manifest = write_corpus(root / "audio", spec)
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in KINDS}
    for trial in range(sizes.trials):
        for kind in KINDS if trial % 2 == 0 else KINDS[::-1]:  # each goes first in turn
            dm = make_datamodule(kind, str(manifest), str(root / f"write-{kind}-{trial}"), 2)
            start, cpu = time.perf_counter(), _cpu_seconds()
            dm.prepare_data()
            wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
            if dm.extraction.computed != len(EMOTIONS) * SPEAKERS * sizes.per_pair:
                raise RuntimeError(f"{kind}: {dm.extraction.computed} files computed")
            runs[kind].append((dm.extraction.seconds, wall, cpu))
    return {
        k: (v[0][0], statistics.median(x[1] for x in v), statistics.median(x[2] for x in v))
        for k, v in runs.items()
    }


def _ratio(value: float, ref: float) -> float | None:
    """``value / ref``; 1.0 for the baseline itself, ``None`` when ``ref`` is 0 (a data part
    can be 0 where the peak could not be reset)."""
    if value == ref:
        return 1.0
    return round(value / ref, 3) if ref > 0 else None


def _row(setting: str, value: float, unit: str, ratio: float | None, note: str) -> Row:
    return {
        "benchmark": NAME,
        "setting": setting,
        "value": round(value, 3),
        "unit": unit,
        "ratio": ratio,
        "note": note,
    }


def rss_rows(reports: dict[tuple[str, int], dict[str, Any]], n: int) -> list[Row]:
    """Peak RSS and its data part (peak - after imports) of each (kind, scale)."""
    rows = []
    for part in ("peak RSS", "data RSS (peak - after imports)"):  # of the process; its data
        value = {
            key: r["data_peak"] - r["after_imports"] if part.startswith("data") else r["peak"]
            for key, r in reports.items()
        }
        for kind in KINDS:
            for scale in (1, 10):
                r = reports[kind, scale]
                if scale == 10:
                    ref, against = value[kind, 1], f"{kind} 1x"
                else:
                    ref, against = value["in-memory", 1], "in-memory 1x"
                note = (
                    f"ratio vs {against}; {scale * n} utt, {r['rows']} used, {r['batches']} "
                    f"batches in {r['seconds']:.1f} s; after imports {r['after_imports']:.0f}, "
                    f"after setup {r['after_setup']:.0f} MiB"
                )
                if kind == "streaming":
                    note += f"; {r['decoded']} chunks decoded ({CHUNK_BYTES} chunks)"
                if scale == 10 and (kind == "streaming") == (part == "peak RSS"):
                    note += "; target < 1.10" if kind == "streaming" else "; target ~10"
                setting = f"{kind} {scale}x: {part}"
                rows.append(
                    _row(setting, value[kind, scale], "MiB", _ratio(value[kind, scale], ref), note)
                )
    return rows


def step_rows(times: dict[str, list[list[float]]], what: str = "1x, whole utterances") -> list[Row]:
    """Median step time of each loader, ratio to the in-memory one (and the mean's ratio)."""
    median = {k: statistics.median(v[1]) for k, v in times.items()}
    mean = {k: statistics.fmean(v[1]) for k, v in times.items()}
    rows = []
    for kind in KINDS:
        fetch = statistics.fmean(times[kind][0])
        note = (
            f"median of {len(times[kind][1])} steps, alternating; mean {1e3 * mean[kind]:.1f} ms "
            f"(ratio {mean[kind] / mean['in-memory']:.3f}); fetch {1e3 * fetch:.2f} ms mean"
        )
        if kind == "streaming":
            note += "; target ratio <= 1.10"
        setting = f"training step, {kind} loader ({what})"
        rows.append(
            _row(
                setting,
                1e3 * median[kind],
                "ms/step",
                _ratio(median[kind], median["in-memory"]),
                note,
            )
        )
    return rows


def writing_rows(found: dict[str, tuple[float, float, float]]) -> list[Row]:
    """Hours of audio per minute of wall time, ratio to the per-file cache."""
    speed = {k: (audio / 3600) / (wall / 60) for k, (audio, wall, _) in found.items()}
    rows = []
    for kind, what in zip(KINDS, ("per-file cache", "shards"), strict=True):
        audio, wall, cpu = found[kind]
        note = f"{audio:.0f} s of audio in {wall:.2f} s wall, {cpu:.1f} CPU s (all processes)"
        setting = f"write {what} (log-mel 40, 2 workers): {kind}"
        ratio = _ratio(speed[kind], speed[KINDS[0]])
        rows.append(_row(setting, speed[kind], "h audio/min", ratio, note))
    return rows


def run(tiny: bool = False) -> list[Row]:
    """Rows for ``python -m benchmarks``."""
    sizes = TINY if tiny else FULL
    root = Path(tempfile.mkdtemp(prefix="mtl-streaming-bench-"))
    try:
        reports = measure_rss(root, sizes.utterances, in_process=tiny)
        times = step_times(root / "features" / "1x.csv", root / "shards-1x", sizes)
        written = writing_speed(root, sizes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rss_rows(reports, sizes.utterances) + step_rows(times) + writing_rows(written)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:  # one measured process: its report as the last line
        print(json.dumps(child(*args.child)))
        return
    for row in run(tiny=args.tiny):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
