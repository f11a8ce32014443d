"""A checkpoint's run: its ``config.yaml``, its tasks, and the classes the config imports."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = [
    "RunConfigError",
    "check_checkpoint_tasks",
    "check_importable",
    "run_config_of",
]


class RunConfigError(ValueError):
    """A checkpoint and the config given with it do not belong together, or cannot be loaded."""


def run_config_of(ckpt_path: str | os.PathLike[str]) -> Path | None:
    """The ``config.yaml`` of the run a checkpoint belongs to, or None.

    LightningCLI writes the config into the run directory (``lightning_logs/version_N``) and
    the checkpoints go to its ``checkpoints/`` folder; a ``config.yaml`` beside the checkpoint
    (a copied run) counts too.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp()); (run / "checkpoints").mkdir()
        >>> _ = (run / "config.yaml").write_text("model: {}")
        >>> run_config_of(run / "checkpoints" / "last.ckpt") == run / "config.yaml"
        True
        >>> run_config_of("last") is None
        True
    """
    text = os.fspath(ckpt_path)
    if text in ("last", "best", "hpc", "registry") or "://" in text:
        return None
    ckpt = Path(text).resolve()
    for folder in (ckpt.parent, ckpt.parent.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def _task_names(tasks: Sequence[Any]) -> list[str]:
    return [t["name"] if isinstance(t, Mapping) else t.name for t in tasks]


def check_checkpoint_tasks(ckpt_path: str | os.PathLike[str], tasks: Sequence[Any]) -> None:
    """Raise :class:`RunConfigError` naming both sides when the model's tasks are not the
    checkpoint's (its weights would not fit: missing and unexpected heads).

    Example:
        >>> import tempfile
        >>> ckpt = Path(tempfile.mkdtemp()) / "x.ckpt"
        >>> torch.save({"hyper_parameters": {"tasks": [{"name": "y1", "size": 3}]}}, ckpt)
        >>> check_checkpoint_tasks(ckpt, [{"name": "y1", "size": 3}])
        >>> check_checkpoint_tasks(ckpt, [{"name": "emotion", "size": 4}])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mtl_lightning.run_config.RunConfigError: checkpoint .../x.ckpt was trained on tasks ['y1 (3)'], the config given declares ['emotion (4)']: ...
    """
    hparams = torch.load(os.fspath(ckpt_path), map_location="cpu", weights_only=True).get(
        "hyper_parameters", {}
    )
    saved = hparams.get("tasks")
    if not saved:
        return

    def described(items: Sequence[Any]) -> list[str]:
        out = []
        for t in items:
            t = t if isinstance(t, Mapping) else t.to_dict()
            out.append(f"{t['name']} ({t['size']})")
        return out

    if described(saved) != described(tasks):
        config = run_config_of(ckpt_path)
        fix = (
            f"pass --config {config} (the run's config)"
            if config
            else "pass the --config the run was trained with"
        )
        raise RunConfigError(
            f"checkpoint {ckpt_path} was trained on tasks {described(saved)}, the config given "
            f"declares {described(tasks)}: {fix}, or leave --config out to use the run's own"
        )


def _class_paths(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        if isinstance(node.get("class_path"), str):
            yield node["class_path"]
        for value in node.values():
            yield from _class_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _class_paths(value)


def check_importable(config_file: str | os.PathLike[str]) -> None:
    """Raise :class:`RunConfigError` for a ``class_path`` of the config whose module cannot be
    imported from here, saying how to make it importable (the usual cause: a trunk defined in
    the user's own ``mymodel.py``, and a command run from another directory).

    Example:
        >>> import tempfile
        >>> cfg = Path(tempfile.mkdtemp()) / "config.yaml"
        >>> _ = cfg.write_text("model:\\n  trunk:\\n    class_path: mymodel.MyTrunk\\n")
        >>> check_importable(cfg)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mtl_lightning.run_config.RunConfigError: .../config.yaml: class_path mymodel.MyTrunk: no module named 'mymodel' importable from ...
    """
    config = yaml.safe_load(Path(config_file).read_text()) or {}
    for class_path in dict.fromkeys(_class_paths(config)):
        module = class_path.rpartition(".")[0]
        if not module:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            top = module.partition(".")[0]
            raise RunConfigError(
                f"{config_file}: class_path {class_path}: no module named {top!r} importable "
                f"from {Path.cwd()}; run from the directory that holds {top}.py, add that "
                f"directory to PYTHONPATH (PYTHONPATH=/path/to/dir python -m mtl_lightning ...), "
                f"or make it a package and `pip install -e` it"
            )
