"""`python -m mtl_lightning fit|validate|test|predict`: LightningCLI with tasks linked once."""

from __future__ import annotations

import sys
from importlib import resources

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mtl_lightning.callbacks import GradientReversalSchedule, MultiTaskSummary
from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.module import MultiTaskModule

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


EXTRA_COMMANDS = {"probe": "train fresh probes on a checkpoint's frozen representation"}
EXTRA_COMMANDS["groups"] = "choose task groups from a TaskAffinity file (TAG network selection)"
EXTRA_COMMANDS["compare"] = "train each task alone vs all tasks together (and groups); a table"


def main(args: list[str] | None = None, run: bool = True) -> MultiTaskCLI | None:
    """Entry point of ``python -m mtl_lightning``; ``args`` defaults to ``sys.argv[1:]``.

    ``fit``, ``validate``, ``test`` and ``predict`` go to LightningCLI; ``probe`` to
    :func:`mtl_lightning.probe.main`.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "probe":
        from mtl_lightning.probe import main as probe_main

        probe_main(argv[1:])
        return None
    if argv and argv[0] in ("groups", "compare"):
        from mtl_lightning import compare, groups

        (groups if argv[0] == "groups" else compare).run(argv[1:])
        return None
    if argv and argv[0] in ("-h", "--help"):
        print("extra subcommands: " + ", ".join(f"{k} ({v})" for k, v in EXTRA_COMMANDS.items()))
    return MultiTaskCLI(
        MultiTaskModule,
        MultiTaskDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=with_default_config(argv),
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
    return [argv[0], "--config", DEFAULT_CONFIG, *argv[1:]]
