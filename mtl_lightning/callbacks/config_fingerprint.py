"""`ConfigFingerprint`: which experiment wrote a checkpoint, so ``--ckpt_path last`` resumes its own.

The *experiment* is the parsed configuration without what may change between a run and its
resume: ``trainer`` (``max_epochs``, ``devices``, callbacks, ...), ``ckpt_path``, the
``--config`` file names, ``seed_everything`` (with ``true``, the LightningCLI default, every
process draws a new seed; a resume restores the generators from the checkpoint anyway), the
reporting-only ``summary``, the subcommands' own ``verbose``/``return_predictions``, and the
derived ``model.tasks`` (linked from the data) and ``data.init_args.restore_from``. Everything
else (``model``, ``data``, ``reversal``, a top-level ``optimizer``, ...) defines the experiment.
Its fingerprint is a SHA-256 of the canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

STATE_KEY = "ConfigFingerprint"
NOT_THE_EXPERIMENT = (
    "trainer",
    "ckpt_path",
    "config",
    "seed_everything",
    "summary",
    "verbose",
    "return_predictions",
)
# set from other values: model.tasks is linked from data.tasks (and written into the run's
# config.yaml), restore_from from --ckpt_path
DERIVED = (("model", "tasks"), ("data", "init_args", "restore_from"))
_MAX_LISTED = 8


def experiment_config(config: Any) -> dict[str, Any]:
    """The part of a parsed CLI config (Namespace or mapping) that defines the experiment.

    Example:
        >>> experiment_config({"trainer": {"max_epochs": 3}, "ckpt_path": "last", "model": {
        ...     "tasks": [], "head_hidden": 8}, "data": {"init_args": {"restore_from": "a.ckpt"}}})
        {'model': {'head_hidden': 8}, 'data': {'init_args': {}}}
    """
    plain = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    plain = {k: v for k, v in plain.items() if k not in NOT_THE_EXPERIMENT}
    # a JSON round trip: paths and other objects become strings, the copy shares nothing, and
    # jsonargparse's ``__path__`` (where a nested config file came from) is dropped
    plain = _without_paths(json.loads(json.dumps(plain, default=str)))
    for *parents, key in DERIVED:
        node: Any = plain
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return plain


def _without_paths(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k != "__path__"}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def config_fingerprint(experiment: Mapping[str, Any]) -> str:
    """A stable hash (16 hex digits) of :func:`experiment_config`'s output; key order is ignored.

    Example:
        >>> config_fingerprint({"a": 1, "b": [1.0]}) == config_fingerprint({"b": [1.0], "a": 1})
        True
    """
    text = json.dumps(experiment, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The dotted keys in which two experiments differ, each with both values (at most 8 listed).

    Example:
        >>> config_differences({"reversal": {"max_lambda": 0.0}}, {"reversal": {"max_lambda": 1.0}})
        ['reversal.max_lambda: 0.0 in the checkpoint, 1.0 now']
    """
    a, b = _flatten(saved), _flatten(current)
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k, _UNSET) != b.get(k, _UNSET)]
    lines = [
        f"{k}: {_show(a.get(k, _UNSET))} in the checkpoint, {_show(b.get(k, _UNSET))} now"
        for k in keys[:_MAX_LISTED]
    ]
    if len(keys) > _MAX_LISTED:
        lines.append(f"... ({len(keys) - _MAX_LISTED} more)")
    return lines


class _Unset:
    def __repr__(self) -> str:
        return "unset"


_UNSET = _Unset()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ConfigFingerprint(pl.Callback):
    """Store the experiment's configuration and its fingerprint in every checkpoint.

    ``python -m mtl_lightning`` always adds this callback; ``--ckpt_path last`` then resumes only
    a ``last*.ckpt`` with the current fingerprint (see
    :func:`mtl_lightning.checkpoint_io.find_last_checkpoint`). The checkpoint holds strings only
    (``callbacks["ConfigFingerprint"]``), so it still loads with ``weights_only=True``.

    Args:
        experiment: The configuration that defines the run (see :func:`experiment_config`).
        source: Where it came from, for messages (e.g. the ``--config`` files).

    Example:
        >>> cb = ConfigFingerprint({"reversal": {"max_lambda": 0.0}})
        >>> sorted(cb.state_dict()), cb.state_dict()["fingerprint"] == cb.fingerprint
        (['experiment', 'fingerprint'], True)
    """

    def __init__(self, experiment: Mapping[str, Any], source: str = "") -> None:
        self.experiment = json.loads(json.dumps(dict(experiment), default=str))
        self.fingerprint = config_fingerprint(self.experiment)
        self.source = source

    @classmethod
    def from_cli(cls, cli: Any) -> ConfigFingerprint:
        """The fingerprint of a LightningCLI's parsed configuration (its subcommand's part)."""
        config = cli.config[cli.subcommand] if cli.subcommand else cli.config
        files = [str(p) for p in (config.get("config") or [])]
        source = f"--config {' '.join(files)} and the command line" if files else "command line"
        return cls(experiment_config(config), source)

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "experiment": json.dumps(self.experiment)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the checkpoints this run writes carry *its* configuration."""


def read_fingerprint(path: str | Path) -> dict[str, Any] | None:
    """``{"fingerprint": str, "experiment": dict}`` stored in a checkpoint file, or None.

    Only the pickled dictionary is read (no tensor data, no class imported, no code run), so it
    is cheap for big checkpoints and safe. None: no fingerprint (a checkpoint from before
    :class:`ConfigFingerprint`), or not a readable torch zip checkpoint.

    Example:
        >>> import tempfile, torch
        >>> path = Path(tempfile.mkdtemp()) / "last.ckpt"
        >>> state = ConfigFingerprint({"data": {"seed": 1}}).state_dict()
        >>> torch.save({"w": torch.ones(2), "callbacks": {STATE_KEY: state}}, path)
        >>> read_fingerprint(path)["experiment"]
        {'data': {'seed': 1}}
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            name = next(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
            with archive.open(name) as f:
                checkpoint = _OpaqueUnpickler(f).load()
        record = checkpoint["callbacks"][STATE_KEY]
        experiment = json.loads(record["experiment"])
        return {"fingerprint": str(record["fingerprint"]), "experiment": experiment}
    except Exception:  # noqa: BLE001 - any unreadable or unstamped file: "no fingerprint"
        return None


class _Opaque:
    """Stands in for every class named in a checkpoint's pickle; accepts and ignores anything."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _OpaqueUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _Opaque

    def persistent_load(self, pid: Any) -> None:  # tensor storages: not read
        return None
