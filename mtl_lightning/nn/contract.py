"""The trunk contract: ``trunk(features[, mask=mask]) -> [batch, out_features]``, checked once."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import Tensor, nn

from mtl_lightning.tasks import TaskSpec

__all__ = [
    "TrunkContractError",
    "check_trunk_output",
    "narrow_embedding_warning",
    "takes_mask",
    "trunk_width",
]


class TrunkContractError(TypeError):
    """A trunk that does not keep the contract; the message names the trunk and the fix."""


def trunk_width(trunk: nn.Module) -> int:
    """The trunk's ``out_features``: an integer, or an error saying what a trunk must expose.

    Example:
        >>> trunk_width(nn.ReLU())
        Traceback (most recent call last):
        ...
        mtl_lightning.nn.contract.TrunkContractError: trunk ReLU must expose an integer `out_features` (the width of the shared embedding it returns as [batch, out_features]); e.g. set `self.out_features = 64` in its __init__
        >>> class Wrapped(nn.Sequential):
        ...     out_features = 5
        >>> trunk_width(Wrapped(nn.Linear(3, 5)))
        5
    """
    width = getattr(trunk, "out_features", None)
    if isinstance(width, int) and not isinstance(width, bool) and width >= 1:
        return width
    raise TrunkContractError(
        f"trunk {type(trunk).__name__} must expose an integer `out_features` (the width of the "
        "shared embedding it returns as [batch, out_features]); e.g. set "
        "`self.out_features = 64` in its __init__"
    )


def takes_mask(trunk: nn.Module) -> bool:
    """Whether ``trunk.forward`` accepts a ``mask`` keyword (padded whole utterances).

    Example:
        >>> takes_mask(nn.Linear(3, 4))
        False
    """
    try:
        parameters = inspect.signature(trunk.forward).parameters.values()
    except (TypeError, ValueError):
        return True  # cannot tell: let the call decide
    return any(p.name == "mask" or p.kind is p.VAR_KEYWORD for p in parameters)


def check_trunk_output(trunk: nn.Module, features: Tensor, output: object) -> None:
    """Raise :class:`TrunkContractError` unless ``output`` is a ``[batch, out_features]`` Tensor.

    Example:
        >>> import torch
        >>> class Pooled(nn.Module):
        ...     out_features = 8
        ...     def forward(self, x):
        ...         return x.new_zeros(x.shape[0], 8, 1, 1)
        >>> check_trunk_output(Pooled(), torch.zeros(4, 3), Pooled()(torch.zeros(4, 3)))
        Traceback (most recent call last):
        ...
        mtl_lightning.nn.contract.TrunkContractError: trunk Pooled returned shape [4, 8, 1, 1], expected [4, 8] = [batch, out_features]: flatten the pooled map in forward (`return x.flatten(1)`)
    """
    name, width = type(trunk).__name__, trunk_width(trunk)
    batch = features.shape[0]
    expected = [batch, width]
    if not isinstance(output, Tensor):
        raise TrunkContractError(
            f"trunk {name} returned {type(output).__name__}, expected a Tensor of shape "
            f"{expected} = [batch, out_features]; return only the embedding from forward"
        )
    shape = list(output.shape)
    if shape == expected:
        return
    if len(shape) > 2 and shape[:2] == expected and all(s == 1 for s in shape[2:]):
        hint = "flatten the pooled map in forward (`return x.flatten(1)`)"
    elif len(shape) == 2 and shape[0] == batch:
        hint = (
            f"its out_features is {width} but it returns {shape[1]} features: set "
            f"`out_features = {shape[1]}` or change its last layer"
        )
    elif shape and shape[0] != batch:
        hint = f"the first dimension must stay the batch ({batch} samples in this batch)"
    else:
        hint = "return one embedding vector per sample"
    raise TrunkContractError(
        f"trunk {name} returned shape {shape}, expected {expected} = [batch, out_features]: {hint}"
    )


def narrow_embedding_warning(width: int, tasks: Sequence[TaskSpec]) -> str | None:
    """A warning text when the embedding is narrower than the largest main task's class count.

    Example:
        >>> narrow_embedding_warning(2, [TaskSpec("a", 5)])
        "the shared embedding has 2 dimension(s), fewer than the 5 classes of task 'a': they may not be separable; widen the trunk (out_features)"
        >>> narrow_embedding_warning(8, [TaskSpec("a", 5)]) is None
        True
    """
    sized = [t for t in tasks if t.is_classification and not t.adversarial and t.size > width]
    if not sized:
        return None
    widest = max(sized, key=lambda t: t.size)
    return (
        f"the shared embedding has {width} dimension(s), fewer than the {widest.size} classes of "
        f"task {widest.name!r}: they may not be separable; widen the trunk (out_features)"
    )
