"""Feature extraction throughput and a cached epoch's loading time vs the training step.

Writes a generated corpus (WAV/FLAC, 16 and 22.05 kHz, some stereo), then measures:

* extraction of log-mel features (40 bands) into an empty cache with 1 and 2 worker
  processes: utterances/s and times real time (audio seconds / wall seconds);
* reading the cache and building the datasets (:meth:`AudioFeatureDataModule.setup`, once per
  run);
* one epoch of the cached training loader (whole utterances padded per batch with a mask, as in
  ``configs/audio_speaker_adversarial.yaml``), per batch;
* the training step (forward with the mask, losses, backward, AdamW step) of the default
  :class:`MultiTaskModule` on those batches, per batch. Loading should be < 10% of it.

Run: ``python benchmarks/audio_throughput.py [--per-pair N] [--workers 1 2] [--threads 1]`` or,
with the other benchmarks, ``python -m benchmarks [--only audio_throughput]``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch

from mtl_lightning import AudioFeatureDataModule, MultiTaskModule
from mtl_lightning.audio.extractor import FeatureSpec
from mtl_lightning.audio.parallel import extract_all
from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus

warnings.filterwarnings("ignore")
N_MELS = 40


@dataclass
class Measurement:
    """Everything one call of :func:`measure` found (seconds unless named otherwise)."""

    utterances: int
    audio_seconds: float
    extraction: dict[int, float]  # workers -> wall seconds for the whole corpus
    extraction_cpu: dict[int, float]  # workers -> CPU seconds, all processes together
    setup: float  # cache read + datasets, once per run
    load_per_batch: float  # mean over one cached training epoch
    step_per_batch: float  # median training step
    batches: int
    batch_size: int


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished (reaped) child processes."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def extraction(paths: list[Path], cache: Path, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds (all processes) to extract every file into an empty cache."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    spec = FeatureSpec(n_mels=N_MELS)
    result = extract_all(paths, spec, cache, workers=workers, progress=False)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if result.computed != len(paths) or result.errors:
        raise RuntimeError(f"extraction failed: {result.errors}")
    return seconds, cpu


def loading_and_step(
    manifest: Path, cache: Path, batch_size: int, steps: int
) -> tuple[float, float, float, int]:
    """Setup seconds, mean seconds per batch of one cached epoch, median step seconds, batches."""
    data = AudioFeatureDataModule(
        str(manifest),
        adversarial=["speaker"],
        n_mels=N_MELS,
        cache_dir=str(cache),
        progress=False,
        batch_size=batch_size,
    )
    start = time.perf_counter()
    data.setup("fit")
    setup = time.perf_counter() - start
    if data.extraction is None or data.extraction.computed:
        raise RuntimeError("the loader benchmark must read every feature from the cache")
    start = time.perf_counter()
    batches = list(data.train_dataloader())
    load = (time.perf_counter() - start) / len(batches)
    torch.manual_seed(0)
    model = MultiTaskModule(data.tasks).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_times = []
    for i in range(steps + 2):  # two warm-up steps
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        losses = model.forward_losses(batch, i).losses
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if i >= 2:
            step_times.append(time.perf_counter() - start)
    return setup, load, statistics.median(step_times), len(batches)


def measure(
    corpus: CorpusSpec,
    workers: list[int],
    batch_size: int = 32,
    steps: int = 10,
    trials: int = 3,
) -> Measurement:
    """Write ``corpus`` to a temporary folder and time extraction (median of ``trials``
    alternating trials, each into an empty cache), loading and training."""
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_corpus(Path(tmp) / "corpus", corpus)
        paths = sorted(manifest.parent.rglob("*.wav")) + sorted(manifest.parent.rglob("*.flac"))
        audio = sum(sf.info(str(p)).duration for p in paths)
        torch.set_num_threads(1)  # each extraction worker uses one thread: like with like
        runs: dict[int, list[tuple[float, float]]] = {w: [] for w in workers}
        try:
            for trial in range(trials):
                for w in workers:
                    runs[w].append(extraction(paths, Path(tmp) / f"cache{w}-{trial}", w))
        finally:
            torch.set_num_threads(threads)
        times = {w: statistics.median(t for t, _ in v) for w, v in runs.items()}
        cpu = {w: statistics.median(c for _, c in v) for w, v in runs.items()}
        setup, load, step, n = loading_and_step(
            manifest, Path(tmp) / f"cache{workers[0]}-0", batch_size, steps
        )
    return Measurement(len(paths), audio, times, cpu, setup, load, step, n, batch_size)


def table_rows(m: Measurement) -> list[dict[str, object]]:
    """Rows in the ``python -m benchmarks`` format (two baselines: 1 worker, the step)."""
    name = "audio_throughput"
    one = m.extraction[min(m.extraction)]
    rows: list[dict[str, object]] = [
        {
            "benchmark": name,
            "setting": f"extract log-mel, {w} worker(s)",
            "value": round(m.utterances / s, 1),
            "unit": "utt/s",
            "ratio": round(one / s, 3),
            "note": f"{m.audio_seconds / s:.0f}x real time; {m.extraction_cpu[w]:.2f} CPU s "
            f"(all processes) for {m.utterances} utt, {m.audio_seconds:.0f} s audio",
        }
        for w, s in sorted(m.extraction.items())
    ]
    rows += [
        {
            "benchmark": name,
            "setting": "training step (default model), per batch",
            "value": round(1e3 * m.step_per_batch, 2),
            "unit": "ms/batch",
            "ratio": 1.0,
            "note": f"batch {m.batch_size}, whole utterances + mask",
        },
        {
            "benchmark": name,
            "setting": "loading / step (cached epoch), per batch",
            "value": round(1e3 * m.load_per_batch, 3),
            "unit": "ms/batch",
            "ratio": round(m.load_per_batch / m.step_per_batch, 4),
            "note": f"target ratio < 0.10; {m.batches} batches/epoch",
        },
        {
            "benchmark": name,
            "setting": "read cache + setup, once per run",
            "value": round(m.setup, 3),
            "unit": "s",
            "ratio": round(m.setup / (m.step_per_batch * m.batches), 3),
            "note": "ratio: vs one epoch of training steps",
        },
    ]
    return rows


def run(tiny: bool = False) -> list[dict[str, object]]:
    """Rows for ``python -m benchmarks``."""
    if tiny:
        corpus = CorpusSpec(speakers=2, emotions=2, per_pair=2, min_seconds=0.2, max_seconds=0.3)
        return table_rows(measure(corpus, [1, 2], batch_size=4, steps=1, trials=1))
    return table_rows(measure(CorpusSpec(speakers=8, emotions=4, per_pair=16), [1, 2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--speakers", type=int, default=8)
    parser.add_argument("--emotions", type=int, default=4)
    parser.add_argument("--per-pair", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: less noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = CorpusSpec(args.speakers, args.emotions, args.per_pair)
    m = measure(corpus, args.workers, args.batch_size, args.steps, args.trials)
    print(
        f"\n{m.utterances} utterances, {m.audio_seconds:.0f} s of audio, batch {m.batch_size}; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"thread(s), torch {torch.__version__}\n"
    )
    print("| measurement | value | ratio | note |")
    print("|---|---|---|---|")
    for r in table_rows(m):
        print(f"| {r['setting']} | {r['value']} {r['unit']} | {r['ratio']} | {r['note']} |")


if __name__ == "__main__":
    main()
