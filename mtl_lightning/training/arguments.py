"""The module's constructor arguments: the checks of its plain options, and the plain-data
hyperparameters a checkpoint keeps of them."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

from mtl_lightning.adversary import AdversaryConfig
from mtl_lightning.adversary.config import config_dict
from mtl_lightning.tasks import TaskSpec

__all__ = ["check_options", "keep_plain_hparams"]

#: the arguments kept in the hparams only as plain data (a CLI config), never as live objects
LIVE_ARGUMENTS = ("trunk", "optimizer", "lr_scheduler", "weighting")


def check_options(grad_cos_every_n_steps: int, nonfinite: str) -> None:
    """Raise a ``ValueError`` naming the first invalid option.

    Example:
        >>> check_options(0, "skip")
        >>> check_options(-1, "skip")
        Traceback (most recent call last):
        ...
        ValueError: grad_cos_every_n_steps must be >= 0, got -1
    """
    if grad_cos_every_n_steps < 0:
        raise ValueError(f"grad_cos_every_n_steps must be >= 0, got {grad_cos_every_n_steps}")
    if nonfinite not in ("raise", "skip", "off"):
        raise ValueError(f"nonfinite must be 'raise', 'skip' or 'off', got {nonfinite!r}")


def keep_plain_hparams(
    hparams: MutableMapping[str, Any],
    tasks: Sequence[TaskSpec],
    adversary_config: AdversaryConfig | None,
    adversaries: dict[str, AdversaryConfig] | None,
) -> None:
    """Outside the CLI the arguments are live objects; checkpoints keep only plain data so
    they load with ``torch.load(weights_only=True)``. Pass them again to
    ``load_from_checkpoint``.

    Example:
        >>> hparams = {"trunk": object(), "optimizer": "adamw", "weighting": None}
        >>> keep_plain_hparams(hparams, [TaskSpec("a", 2)], None, None)
        >>> sorted(hparams), hparams["tasks"][0]["name"]
        (['adversaries', 'adversary_config', 'optimizer', 'tasks', 'weighting'], 'a')
    """
    for key in LIVE_ARGUMENTS:
        if not isinstance(hparams.get(key), (dict, str, type(None))):
            del hparams[key]
    # plain dicts, so checkpoints load with torch.load(weights_only=True)
    hparams["tasks"] = [t.to_dict() for t in tasks]
    hparams["adversary_config"] = config_dict(adversary_config)
    hparams["adversaries"] = (
        {k: config_dict(v) for k, v in adversaries.items()} if adversaries else None
    )
