"""`python -m mtl_lightning fit|validate|test|predict`: LightningCLI with tasks linked once."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from mtl_lightning.callbacks import GradientReversalSchedule, MultiTaskSummary
from mtl_lightning.callbacks.config_fingerprint import ConfigFingerprint
from mtl_lightning.callbacks.data_summary import DataSummary
from mtl_lightning.callbacks.epoch_end_resume import EpochEndResume
from mtl_lightning.callbacks.fail_fast import ensure_fail_fast
from mtl_lightning.callbacks.rng_state import RNGStateCheckpoint
from mtl_lightning.checkpoint_io import (
    AtomicCheckpointIO,
    checkpoint_dirs,
    find_last_checkpoint,
    remove_stale_temp_files,
)
from mtl_lightning.checks import CheckpointFileError, check_checkpoint_file
from mtl_lightning.console import PROG, quiet_library_noise
from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.run_config import check_checkpoint_tasks, check_importable, run_config_of

#: ``fit --help`` on ``--model.trunk``, instead of every ``torch.nn.Module`` subclass
TRUNK_HELP = (
    "; any nn.Module with an integer `out_features` that returns [batch, out_features], e.g. "
    "mtl_lightning.nn.CNNTrunk, mtl_lightning.nn.DenseTrunk or your own class (docs/your-model.md)"
)
DEFAULT_CONFIG = str(resources.files("mtl_lightning") / "resources" / "default.yaml")


class MultiTaskCLI(LightningCLI):
    """LightningCLI for :class:`MultiTaskModule`.

    The datamodule declares the tasks and ``data.tasks`` is linked into ``model.tasks``. Two
    callbacks are always present and configured at the top level: ``reversal``
    (:class:`GradientReversalSchedule`) and ``summary`` (:class:`MultiTaskSummary`). With no
    ``--config``, the packaged speaker-adversarial default is used.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(GradientReversalSchedule, "reversal")
        parser.add_lightning_class_args(MultiTaskSummary, "summary")
        parser.link_arguments("data.tasks", "model.tasks", apply_on="instantiate")
        for action in parser._actions:  # every nn.Module would be listed (~500 lines of help)
            if action.dest == "model.trunk" and hasattr(action, "extra_help"):
                action.extra_help = lambda: TRUNK_HELP

    def before_instantiate_classes(self) -> None:
        """``validate|test|predict --ckpt_path X``: a datamodule with a ``restore_from`` argument
        (left unset) gets ``X``, so the tasks it declares, and the heads sized from them, are
        the checkpoint's (e.g. its label vocabulary), not those of the data given now."""
        if self.subcommand not in ("validate", "test", "predict"):
            return
        config = self.config[self.subcommand]
        ckpt_path, init_args = config.get("ckpt_path"), config.get("data.init_args")
        if (
            ckpt_path
            and Path(ckpt_path).is_file()
            and init_args is not None
            and "restore_from" in init_args
            and init_args.restore_from is None
        ):
            init_args.restore_from = str(ckpt_path)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Add :class:`AtomicCheckpointIO` (unless the config names a ``CheckpointIO``) and the
        :class:`RNGStateCheckpoint` and :class:`EpochEndResume` callbacks (unless configured),
        for exact, crash-safe resume."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.get("trainer") or {}
        plugins = trainer.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if not any(isinstance(c, RNGStateCheckpoint) for c in callbacks):
            callbacks.append(RNGStateCheckpoint())
        if not any(isinstance(c, EpochEndResume) for c in callbacks):
            callbacks.append(EpochEndResume())  # a last-batch step checkpoint
        if not any(isinstance(c, DataSummary) for c in callbacks):
            callbacks.append(DataSummary())  # what the run trains on, printed once
        callbacks.append(ConfigFingerprint.from_cli(self))  # for `--ckpt_path last`
        if trainer.get("enable_checkpointing") is not False:
            callbacks = with_last_checkpoint(callbacks)
        fail_fast = ensure_fail_fast(callbacks)  # bounded collectives and SIGTERM
        kwargs = {"plugins": plugins, "callbacks": callbacks, **kwargs}
        built = super().instantiate_trainer(**kwargs)
        fail_fast.apply_timeout(built.strategy, configured=trainer.get("strategy"))
        return built

    def _check_ckpt_path(self) -> None:
        """Remove the temporary files of killed checkpoint writes; ``--ckpt_path last`` finds
        the newest ``last*.ckpt`` of earlier runs (versions) *of this experiment*
        (:class:`ConfigFingerprint`; only another experiment's: an error naming both); a
        missing or truncated checkpoint file is an error naming the file."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        remove_stale_temp_files(checkpoint_dirs(self.trainer))
        if config.get("ckpt_path") == "last":
            stamps = (c for c in self.trainer.callbacks if isinstance(c, ConfigFingerprint))
            stamp = next(stamps, None)
            found = find_last_checkpoint(self.trainer, stamp)
            if found is not None:
                config["ckpt_path"] = found
            elif self.subcommand != "fit":  # fit starts afresh; evaluating nothing is an error
                dirs = [str(d) for d in checkpoint_dirs(self.trainer)]
                raise CheckpointFileError(
                    f"--ckpt_path last: no last*.ckpt of this experiment under {dirs}; "
                    f"{self.subcommand} would use an untrained model. Pass --ckpt_path <file>"
                )
        ckpt_path = config.get("ckpt_path")
        if ckpt_path:
            check_checkpoint_file(ckpt_path)
            if Path(str(ckpt_path)).is_file():
                check_checkpoint_tasks(ckpt_path, self.model.tasks)

    before_fit = before_validate = before_test = before_predict = _check_ckpt_path

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then reject a missing or truncated ``--ckpt_path`` with an error naming the
        file (LightningCLI reads the checkpoint's hyperparameters right after parsing)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = (self.config[subcommand] if subcommand else self.config).get("ckpt_path")
        if ckpt_path:
            check_checkpoint_file(ckpt_path)


def lightning_cli(
    argv: list[str], from_command_line: bool = False, run: bool = True
) -> MultiTaskCLI:
    """``fit|validate|test|predict``: LightningCLI over :class:`MultiTaskModule` and any
    :class:`MultiTaskDataModule`, the packaged default config when none is given
    (:func:`with_default_config`). Reached through :func:`mtl_lightning.commands.main`.

    ``from_command_line``: the arguments are the process's own, so LightningCLI reads them
    from ``sys.argv`` (set to the full list) instead of an ``args`` list.
    """
    quiet_library_noise(argv[0] if argv else None)
    full = with_default_config(list(argv))
    if from_command_line:
        sys.argv = [PROG, *full]
    return MultiTaskCLI(
        MultiTaskModule,
        MultiTaskDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=None if from_command_line else full,
        run=run,
    )


def with_default_config(argv: list[str]) -> list[str]:
    """Insert the packaged default config after the subcommand when no ``--config`` is given.

    Only then: a user's config is complete by itself and is never merged key by key (or list
    item by list item) with the default.

    Example:
        >>> with_default_config(["fit", "--trainer.max_epochs", "1"])[1:2]
        ['--config']
        >>> with_default_config(["fit", "--config", "x.yaml"])
        ['fit', '--config', 'x.yaml']
    """
    if not argv or argv[0] not in ("fit", "validate", "test", "predict"):
        return argv
    if any(a in ("-c", "--config") or a.startswith("--config=") for a in argv[1:]):
        return argv
    config = DEFAULT_CONFIG
    if argv[0] != "fit":  # a checkpoint evaluated alone brings its run's config
        run_config = run_config_of(ckpt) if (ckpt := _argument(argv, "--ckpt_path")) else None
        if run_config is not None:
            check_importable(run_config)
            print(f"mtl_lightning: using the run's config {run_config}", file=sys.stderr)
            config = str(run_config)
    return [argv[0], "--config", config, *argv[1:]]


def _argument(argv: list[str], name: str) -> str | None:
    """The value of ``name`` in ``argv`` (``--name value`` or ``--name=value``), last one wins.

    Example:
        >>> _argument(["test", "--ckpt_path", "a.ckpt", "--ckpt_path=b.ckpt"], "--ckpt_path")
        'b.ckpt'
    """
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def with_last_checkpoint(callbacks: list[Any]) -> list[Any]:
    """Make the callbacks save a ``last.ckpt``: the first ``ModelCheckpoint`` whose
    ``save_last`` is unset gets ``save_last=True``; with no ``ModelCheckpoint`` at all, one is
    added (Lightning's default one keeps no ``last.ckpt``). ``save_last: false`` is kept.

    Example:
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> [c.save_last for c in with_last_checkpoint([])]
        [True]
        >>> [c.save_last for c in with_last_checkpoint([ModelCheckpoint(save_last=False)])]
        [False]
    """
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    if not checkpoints:
        return [*callbacks, ModelCheckpoint(save_last=True)]
    if not any(c.save_last for c in checkpoints):
        unset = [c for c in checkpoints if c.save_last is None]
        if unset:
            unset[0].save_last = True
    return callbacks
