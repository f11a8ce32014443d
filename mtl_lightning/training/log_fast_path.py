"""A fast path for a known cost of Lightning's ``self.log``: each call moves the logged key's
accumulator (a ``_ResultMetric``) to the value's device with a walk over its whole ``__dict__``,
even when it is already there (Lightning-AI/pytorch-lightning#20388; the same fix is proposed
upstream in #21769). On this project's 2-core CPU that walk costs about 1 ms per call, while the
dense five-task step costs about 2 ms, and a logged step makes a dozen calls.

:func:`install` wraps ``_ResultMetric.to``: a plain ``.to(device)`` whose states and defaults
are all tensors already on ``device`` (or, for a logged torchmetrics object, whose object and
states are all there) returns the metric as it is, which is what the walk would have produced; any other call (a dtype, keyword arguments, another device, a non-tensor value)
runs Lightning's own method. It is installed once per process, when a
:class:`~mtl_lightning.MultiTaskModule` is built; a Lightning version without the class is left
alone.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["install"]

_MARK = "__mtl_lightning_fast_path__"


def _states_on(metric: Any, device: torch.device) -> bool:
    """Whether every state of a torchmetrics ``metric`` (a tensor, or a list of tensors) is on
    ``device``, and it has no parameter, buffer or child module that a move would walk."""
    if metric._parameters or metric._buffers or metric._modules:
        return False
    for name in metric._defaults:
        state = getattr(metric, name, None)
        tensors = state if isinstance(state, list) else [state]
        if not all(isinstance(t, Tensor) and t.device == device for t in tensors):
            return False
    return True


def _already_on(metric: Any, device: torch.device) -> bool:
    """Whether moving ``metric`` (a ``_ResultMetric``) to ``device`` would change nothing.

    A logged tensor's accumulator: every state and default is a tensor on ``device``. A logged
    torchmetrics object's (no states of its own): the object is on ``device`` with every state
    there, and its cached step value (``_forward_cache``) is None or a tensor there.
    """
    defaults = getattr(metric, "_defaults", None)
    if defaults is None:
        return False
    if not getattr(metric, "is_tensor", False):
        value, cache = metric.__dict__.get("value"), metric.__dict__.get("_forward_cache")
        if defaults or not (
            cache is None or (isinstance(cache, Tensor) and cache.device == device)
        ):
            return False
        if value is None:
            return True
        return isinstance(value, Metric) and value.device == device and _states_on(value, device)
    if not defaults:
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
