"""A fast path for a known cost of Lightning's ``self.log``: each call moves the logged key's
accumulator (a ``_ResultMetric``) to the value's device with a walk over its whole ``__dict__``,
even when it is already there (Lightning-AI/pytorch-lightning#20388; the same fix is proposed
upstream in #21769). On this project's 2-core CPU that walk costs about 1 ms per call, while the
dense five-task step costs about 2 ms, and a logged step makes a dozen calls.

:func:`install` wraps ``_ResultMetric.to``: a plain ``.to(device)`` whose states and defaults
are all tensors already on ``device`` returns the metric as it is, which is what the walk would
have produced; any other call (a dtype, keyword arguments, another device, a non-tensor value)
runs Lightning's own method. It is installed once per process, when a
:class:`~mtl_lightning.MultiTaskModule` is built; a Lightning version without the class is left
alone.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

__all__ = ["install"]

_MARK = "__mtl_lightning_fast_path__"


def _already_on(metric: Any, device: torch.device) -> bool:
    """Whether every state and default of ``metric`` is a tensor on ``device``."""
    defaults = getattr(metric, "_defaults", None)
    if not getattr(metric, "is_tensor", False) or not defaults:
        return False
    for name, default in defaults.items():
        state = getattr(metric, name, None)
        if not (isinstance(default, Tensor) and isinstance(state, Tensor)):
            return False
        if default.device != device or state.device != device:
            return False
    return True


def install() -> bool:
    """Install the fast path (idempotent); ``False`` where Lightning has no ``_ResultMetric.to``.

    Example:
        >>> from lightning.pytorch.trainer.connectors.logger_connector.result import (
        ...     _ResultCollection)
        >>> install()
        True
        >>> results = _ResultCollection(training=True)
        >>> results.log("training_step", "loss", torch.tensor(2.0), on_step=True, batch_size=4)
        >>> metric = results["training_step.loss"]
        >>> metric.to(torch.device("cpu")) is metric, metric.compute().item()
        (True, 2.0)
    """
    try:
        from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric
    except ImportError:  # pragma: no cover - another Lightning layout
        return False
    original = _ResultMetric.__dict__.get("to")
    if original is None:  # pragma: no cover
        return False
    if getattr(original, _MARK, False):
        return True

    @functools.wraps(original)
    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        plain = not kwargs and len(args) == 1 and isinstance(args[0], torch.device)
        if plain and _already_on(self, args[0]):
            return self
        return original(self, *args, **kwargs)

    setattr(to, _MARK, True)
    _ResultMetric.to = to  # type: ignore[method-assign]
    return True
