"""Time a Lightning fit against other loops step by step, interleaved in one process.

At the start of every Lightning training step, one step of each contender runs (its own model
copy, optimizer and data iterator) and is timed; the Lightning step is timed from the end of
the last contender's step to the start of the next batch, so it holds the Trainer's loop,
hooks, logging and data fetching. Adjacent steps see the same machine load: on a shared
machine whose speed drifts by 10% within seconds the ratio of their sums is steady to ~1%.
Times are this process's CPU time (one torch thread: the work done) and wall time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["Interleaved", "cycle", "fit_interleaved", "outside_lightning", "to_device"]

#: set by ``import lightning`` (so that checking for CUDA does not initialise it): torch then
#: answers ``torch.cuda.is_available()``, which every ``Optimizer.step`` asks, through NVML,
#: and on a machine without NVML (a CUDA build of torch, no GPU driver) it tries to load the
#: library again on every call (0.1-0.4 ms here)
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"

Step = Callable[[], None]


def cycle(loader: Any) -> Iterator[Any]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def outside_lightning(step: Step) -> Step:
    """``step`` run as in a process that never imported Lightning: without :data:`NVML_CHECK`
    in the environment (restored afterwards). Where NVML cannot be loaded, torch's answer is
    the same either way (it falls back to the CUDA runtime's count); only the failed load goes."""

    def run() -> None:
        saved = os.environ.pop(NVML_CHECK, None)
        try:
            step()
        finally:
            if saved is not None:
                os.environ[NVML_CHECK] = saved

    return run


class Interleaved(pl.Callback):
    """Runs and times one step of every contender before each Lightning step; times the
    Lightning steps in between (CPU and wall seconds, after ``warmup`` steps)."""

    def __init__(self, contenders: dict[str, Step], warmup: int, cuda: bool = False) -> None:
        self.contenders = contenders
        self.warmup = warmup
        # on a GPU the work is asynchronous: wait for it before reading a clock
        self.sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
        self.times: dict[str, list[tuple[float, float]]] = {k: [] for k in contenders}
        self.times["lightning"] = []
        self._end: tuple[float, float] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.sync()
        now = (time.process_time(), time.perf_counter())
        if self._end is not None and trainer.global_step > self.warmup:
            self.times["lightning"].append((now[0] - self._end[0], now[1] - self._end[1]))
        for name, step in self.contenders.items():
            start = (time.process_time(), time.perf_counter())
            step()
            self.sync()
            end = (time.process_time(), time.perf_counter())
            if trainer.global_step >= self.warmup:
                self.times[name].append((end[0] - start[0], end[1] - start[1]))
        self._end = (time.process_time(), time.perf_counter())


def timing_trainer(
    max_steps: int, callbacks: list[pl.Callback], accelerator: str = "cpu"
) -> pl.Trainer:
    """A one-device Trainer that only trains: no validation, logger, checkpoints, progress bar
    or summary, so a timed step holds nothing but the step."""
    return pl.Trainer(
        max_steps=max_steps,
        accelerator=accelerator,
        devices=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        callbacks=callbacks,
    )


def fit_interleaved(
    model: pl.LightningModule,
    data: pl.LightningDataModule,
    contenders: dict[str, Step],
    steps: int,
    baseline: str,
    callbacks: Sequence[pl.Callback] = (),
    warmup: int = 3,
    accelerator: str = "cpu",
) -> dict[str, float]:
    """One ``Trainer.fit`` of ``steps`` timed steps, each paired with a step of every contender.

    Returns, per loop (``lightning`` and each contender), the CPU and wall ms per step and the
    ratio of its summed times to ``baseline``'s over the paired steps. On ``accelerator="gpu"``
    every clock reading waits for the device (the wall times are the ones that count there).
    """
    timer = Interleaved(contenders, warmup, cuda=accelerator == "gpu")
    # the last step has no next batch start to end its timing; the contenders run on the same
    # device; the timer first: its hook starts the step
    trainer = timing_trainer(steps + warmup + 1, [timer, *callbacks], accelerator)
    trainer.fit(model, data)
    n = min(len(v) for v in timer.times.values())
    result: dict[str, float] = {}
    for i, kind in enumerate(("cpu", "wall")):
        sums = {k: sum(x[i] for x in v[:n]) for k, v in timer.times.items()}
        for name, total in sums.items():
            result[f"{name}_{kind}_ms"] = 1000 * total / n
            result[f"{name}_{kind}_ratio"] = total / sums[baseline]
    return result


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch's tensors on ``device`` (nested dicts kept)."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


def timed_steps(
    datamodules: dict[str, Any], make_model: Any, warmup: int, steps: int
) -> dict[str, list[list[float]]]:
    """``{kind: [fetch seconds, step seconds]}`` per timed step of a model (``make_model(tasks)``,
    the same initial weights for each) trained on each datamodule's loader, alternating step by
    step, one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    contenders = {}
    for kind, dm in datamodules.items():
        dm.setup("fit")
        torch.manual_seed(0)  # the same initial weights for both
        model = make_model(dm.tasks).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        contenders[kind] = (model, optimizer, cycle(dm.train_dataloader()))
    times: dict[str, list[list[float]]] = {k: [[], []] for k in datamodules}
    try:
        for i in range(warmup + steps):
            for kind, (model, optimizer, batches) in contenders.items():
                start = time.perf_counter()
                batch = next(batches)
                fetched = time.perf_counter()
                losses = model.forward_losses(batch, i).losses
                optimizer.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                optimizer.step()
                if i >= warmup:
                    times[kind][0].append(fetched - start)
                    times[kind][1].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return times
