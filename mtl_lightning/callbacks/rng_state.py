"""`RNGStateCheckpoint`: keep the random generators' state in checkpoints for an exact resume."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import torch


def collect_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's (if installed) and torch's CPU and CUDA generators.

    Only tensors, ints, tuples and ``None``, so the checkpoint loads with
    ``torch.load(weights_only=True)``.

    Example:
        >>> state = collect_rng_state(); a = torch.rand(2)
        >>> restore_rng_state(state); bool(torch.equal(a, torch.rand(2)))
        True
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch in practice
        return state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (str(kind), torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss)
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the generators from :func:`collect_rng_state`'s output (missing entries are skipped)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU visible when saved; a run resumed with fewer GPUs visible restores
        # those it has (set_rng_state_all would index past the last device)
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))


def _tuples(value: Any) -> Any:
    """Lists back to tuples (``random.setstate`` wants tuples; serialisers may give lists)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class RNGStateCheckpoint(pl.Callback):
    """Save the random generators in every checkpoint and restore them on resume.

    Lightning restores the model, optimizer, schedulers, loops and stateful loaders, but not the
    global generators, so after ``--ckpt_path last`` dropout masks (and anything else drawing
    from the global RNG) would differ from an uninterrupted run. With this callback a run killed
    mid-epoch continues with the exact random stream it had at the checkpoint. The state is taken
    on the process that writes the checkpoint (rank zero) and restored on every rank: with
    ``seed_everything`` every rank starts from the same seed and draws the same amount, so the
    ranks' generators agree. The CLI always adds this callback.

    Example:
        >>> cb = RNGStateCheckpoint(); saved = cb.state_dict(); first = torch.rand(3)
        >>> cb.load_state_dict(saved); bool(torch.equal(first, torch.rand(3)))
        True
    """

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_rng_state(state_dict)
