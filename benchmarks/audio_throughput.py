"""Feature extraction throughput and cached data loading vs the training step.

Writes a generated corpus (WAV/FLAC, 16 and 22.05 kHz), then measures:

* extraction of log-mel features into an empty cache with 1 and 2 worker processes
  (utterances/s and times real time = audio seconds / wall seconds);
* one epoch of the cached training loader of :class:`AudioFeatureDataModule` (whole utterances,
  padded per batch with a mask), per batch;
* the training step (forward, losses, backward, AdamW step) of the default
  :class:`MultiTaskModule` on those batches, per batch; the loading share should be < 10%.

Run: ``python benchmarks/audio_throughput.py [--per-pair N] [--workers 1 2]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import soundfile as sf
import torch

from mtl_lightning import AudioFeatureDataModule, MultiTaskModule
from mtl_lightning.audio.extractor import FeatureSpec
from mtl_lightning.audio.parallel import extract_all
from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus

warnings.filterwarnings("ignore")


def extraction(paths: list[Path], cache: Path, workers: int) -> float:
    """Wall seconds to extract every file into an empty cache."""
    start = time.perf_counter()
    result = extract_all(paths, FeatureSpec(n_mels=40), cache, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    assert result.computed == len(paths) and not result.errors
    return seconds


def loading_and_step(
    manifest: Path, cache: Path, batch_size: int, steps: int
) -> tuple[float, float, int]:
    """Median seconds per batch of the cached loader (one epoch) and of the training step."""
    data = AudioFeatureDataModule(
        str(manifest),
        adversarial=["speaker"],
        n_mels=40,
        cache_dir=str(cache),
        progress=False,
        batch_size=batch_size,
    )
    data.setup("fit")
    assert data.extraction is not None and data.extraction.computed == 0  # all from the cache
    loader = data.train_dataloader()
    batches, load = [], []
    start = time.perf_counter()
    for batch in loader:
        load.append(time.perf_counter() - start)
        batches.append(batch)
        start = time.perf_counter()
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
    return statistics.median(load), statistics.median(step_times), len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--speakers", type=int, default=8)
    parser.add_argument("--emotions", type=int, default=4)
    parser.add_argument("--per-pair", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # extraction workers use one thread each; compare like with like
    with tempfile.TemporaryDirectory() as tmp:
        spec = CorpusSpec(args.speakers, args.emotions, args.per_pair)
        manifest = write_corpus(Path(tmp) / "corpus", spec)
        paths = sorted((Path(tmp) / "corpus").rglob("*.wav")) + sorted(
            (Path(tmp) / "corpus").rglob("*.flac")
        )
        audio = sum(sf.info(str(p)).duration for p in paths)
        rows = []
        for workers in args.workers:
            seconds = extraction(paths, Path(tmp) / f"cache{workers}", workers)
            rows.append(
                (
                    f"extract log-mel, {workers} worker(s)",
                    f"{len(paths) / seconds:.1f} utt/s",
                    f"{audio / seconds:.0f}x real time",
                )
            )
        torch.set_num_threads(threads)  # the training step uses every core
        load, step, n = loading_and_step(
            manifest, Path(tmp) / f"cache{args.workers[0]}", args.batch_size, args.steps
        )
        rows.append(("cached loader, per batch", f"{load * 1e3:.2f} ms", f"{n} batches/epoch"))
        rows.append(("training step (default model), per batch", f"{step * 1e3:.1f} ms", ""))
        rows.append(("loading / step", f"{100 * load / step:.1f}%", "target < 10%"))
    print(
        f"\n{len(paths)} utterances, {audio:.0f} s of audio, batch {args.batch_size}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}\n"
    )
    print("| measurement | value | |")
    print("|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    main()
