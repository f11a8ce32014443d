"""The run's key choices as flat, readable HParams (``reversal/max_lambda``, ``model/trunk``, ...).

The source is the resolved LightningCLI config (the one ``SaveConfigCallback`` writes to
``config.yaml``); without the CLI, the module's and the datamodule's hyperparameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback

Scalar = int | float | str
# trainer arguments that change the result; the others (devices, logging, ...) do not
TRAINER_KEYS = ("max_epochs", "max_steps", "precision", "accumulate_grad_batches")
TRAINER_KEYS += ("gradient_clip_val",)
# optimizer and scheduler classes have many flags; their numbers are what gets tuned
NUMBERS_ONLY = ("model/optimizer", "model/lr_scheduler", "optimizer", "lr_scheduler")
SKIPPED = ("trainer", "model", "data", "summary", "ckpt_path", "config", "tasks")


def cli_config(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The resolved config of the running LightningCLI subcommand, or None without the CLI."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, SaveConfigCallback):
            config = callback.config
            return config.as_dict() if hasattr(config, "as_dict") else dict(config)
    return None


def run_hparams(
    config: Mapping[str, Any], tasks: list[Any], objectives: Mapping[str, str]
) -> dict[str, Scalar]:
    """Flatten a resolved CLI config into HParams: each value a number or a string.

    A ``class_path`` becomes its class name, its ``init_args`` ``<key>/<arg>``; lists become
    their text; ``None`` is ``"none"`` where it is a choice (and left out inside ``init_args``,
    where it means "the default"). ``model.grl_lambda`` (overwritten by the ``reversal``
    schedule) and derived or reporting-only keys are left out; a null
    ``model.adversary_config.objective`` shows the objective each adversary resolved to.

    Args:
        config: The resolved config (``SaveConfigCallback.config``, as a dict).
        tasks: The model's :class:`~mtl_lightning.tasks.TaskSpec` list (one ``task/{name}``).
        objectives: The trunk objective of each adversarial task with attackers.

    Example:
        >>> hp = run_hparams({"seed_everything": 0, "trainer": {"max_epochs": 3, "devices": 2},
        ...     "model": {"trunk": {"class_path": "mtl_lightning.nn.DenseTrunk",
        ...     "init_args": {"divisors": [4, 12], "dropout": None}}, "weighting": None,
        ...     "grl_lambda": 1.0, "adversary_config": {"objective": None}},
        ...     "reversal": {"schedule": "dann", "max_lambda": 12.0}}, [], {"speaker": "hsic"})
        >>> for key, value in hp.items(): print(key, repr(value))
        seed_everything 0
        trainer/max_epochs 3
        reversal/schedule 'dann'
        reversal/max_lambda 12.0
        model/trunk 'DenseTrunk'
        model/trunk/divisors '[4, 12]'
        model/weighting 'StaticWeighting'
        model/adversary_config/objective 'hsic'
    """
    out: dict[str, Scalar] = {}
    if "seed_everything" in config:
        _flatten("seed_everything", config["seed_everything"], out)
    trainer = config.get("trainer") or {}
    for key in TRAINER_KEYS:
        if trainer.get(key) is not None and not (key == "max_steps" and trainer[key] == -1):
            _flatten(f"trainer/{key}", trainer[key], out)
    callbacks = trainer.get("callbacks") or []
    if callbacks:
        out["trainer/callbacks"] = ", ".join(_class_name(c) for c in callbacks)
    for key, value in config.items():  # reversal, a top-level optimizer (None: unused), ...
        if key in SKIPPED or key == "seed_everything" or key.startswith("_") or value is None:
            continue
        _flatten(key, value, out)
    out.update(model_hparams(config.get("model") or {}, "reversal" in config, objectives))
    if config.get("data") is not None:
        _flatten("data", config["data"], out)
    out.update(task_hparams(tasks))
    return out


def model_hparams(
    model: Mapping[str, Any], scheduled: bool, objectives: Mapping[str, str]
) -> dict[str, Scalar]:
    """``model/...`` HParams (see :func:`run_hparams`); ``scheduled``: a reversal schedule
    sets lambda, so the initial ``grl_lambda`` is left out."""
    out: dict[str, Scalar] = {}
    for key, value in model.items():
        if key == "tasks" or key.startswith("_") or (key == "grl_lambda" and scheduled):
            continue
        if key == "weighting" and value is None:
            value = "StaticWeighting"  # the module's default: the plain weighted sum
        _flatten(f"model/{key}", value, out)
    if out.get("model/adversary_config/objective") == "none" and objectives:
        out["model/adversary_config/objective"] = ", ".join(sorted(set(objectives.values())))
    return out


def task_hparams(tasks: list[Any]) -> dict[str, Scalar]:
    """One ``task/{name}`` per task: role, kind, size, weight (and the adversary's kind)."""
    out: dict[str, Scalar] = {}
    for item in tasks:
        spec = item if isinstance(item, Mapping) else item.to_dict()
        text = f"{spec['role']} {spec['kind']} K={spec['size']} w={spec['weight']}"
        if spec["role"] == "adversarial":
            text += f" {spec.get('adversary', 'reversal')}"
        out[f"task/{spec['name']}"] = text
    return out


def fallback_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """Without the CLI: a config-like dict from the module's and the datamodule's hparams,
    ``trainer.max_epochs`` and the reversal schedule's settings."""
    config: dict[str, Any] = {"trainer": {"max_epochs": trainer.max_epochs}}
    config["model"] = {k: v for k, v in dict(pl_module.hparams).items() if k != "tasks"}
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        init_args = dict(getattr(datamodule, "hparams", {}) or {})
        config["data"] = {"class_path": type(datamodule).__name__, "init_args": init_args}
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if type(callback).__name__ == "GradientReversalSchedule":
            keys = ("schedule", "max_lambda", "gamma", "warmup")
            config["reversal"] = {k: getattr(callback, k) for k in keys}
    return config


def _class_name(value: Any) -> str:
    if isinstance(value, Mapping) and "class_path" in value:
        return str(value["class_path"]).rsplit(".", 1)[-1]
    return type(value).__name__


def _flatten(key: str, value: Any, out: dict[str, Scalar]) -> None:
    if isinstance(value, Mapping) and "class_path" in value:
        out[key] = _class_name(value)
        numbers_only = key in NUMBERS_ONLY
        for arg, v in (value.get("init_args") or {}).items():
            is_number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if v is not None and (is_number or not numbers_only):
                _flatten(f"{key}/{arg}", v, out)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if not str(k).startswith("_"):
                _flatten(f"{key}/{k}", v, out)
    elif isinstance(value, bool) or value is None:
        out[key] = str(value).lower()  # a bool would be the number 1.0 in HParams
    elif isinstance(value, (int, float, str)):
        out[key] = value
    elif isinstance(value, (list, tuple)) and all(isinstance(v, Mapping) for v in value):
        out[key] = ", ".join(_class_name(v) for v in value)
    else:
        out[key] = str(list(value) if isinstance(value, tuple) else value)


def log_hparams_session(
    logger: Any, params: Mapping[str, Scalar], metrics: Mapping[str, float], step: int
) -> None:
    """Write the HParams session of a run (its hyperparameters, then "finished") and the final
    ``metrics`` as scalars at ``step``, to a Lightning ``TensorBoardLogger``.

    No experiment summary is written (Lightning's ``log_hyperparams`` writes one per run, and
    TensorBoard then shows the columns of one arbitrary run only): TensorBoard builds the table
    from every run's session, listing first the hyperparameters that differ between runs.
    """
    try:
        from torch.utils.tensorboard.summary import hparams
    except ImportError:  # pragma: no cover - Lightning then writes with tensorboardX
        from tensorboardX.summary import hparams  # type: ignore[no-redef]
    _, start, end = hparams(dict(params), dict(metrics))
    writer = logger.experiment._get_file_writer()  # as TensorBoardLogger.log_hyperparams does
    writer.add_summary(start)
    writer.add_summary(end)
    if metrics:
        logger.log_metrics(dict(metrics), step)
