"""``python -m mtl_lightning <command>``: every subcommand, registered in one table.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (:mod:`mtl_lightning.cli`);
the others are small argparse programs over a checkpoint or a run's files. Each command's
module is imported only when the command runs, and no command module imports this one, so
the table is the one place that knows them all.

Example:
    >>> sorted(COMMANDS)
    ['compare', 'erase', 'fit', 'groups', 'predict', 'probe', 'test', 'validate']
    >>> COMMANDS["probe"].target
    'mtl_lightning.probe:main'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mtl_lightning.console import PROG


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line help and the ``module:function`` that runs it.

    The function takes the arguments after the command name; LightningCLI's commands take
    the whole argument list (the command name included) and ``run``.
    """

    help: str
    target: str
    lightning: bool = False

    def load(self) -> Callable[..., Any]:
        """Import the module and return the function (the import happens here, not before)."""
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


COMMANDS: dict[str, Command] = {
    "fit": Command(
        "train a model (with no --config: the packaged speaker-adversarial default)",
        "mtl_lightning.cli:lightning_cli",
        lightning=True,
    ),
    "validate": Command(
        "evaluate a checkpoint on the validation split",
        "mtl_lightning.cli:lightning_cli",
        lightning=True,
    ),
    "test": Command(
        "evaluate a checkpoint on the test split",
        "mtl_lightning.cli:lightning_cli",
        lightning=True,
    ),
    "predict": Command(
        "write labelled per-task predictions of a checkpoint",
        "mtl_lightning.cli:lightning_cli",
        lightning=True,
    ),
    "probe": Command(
        "train fresh probes on a checkpoint's frozen representation",
        "mtl_lightning.probe:main",
    ),
    "erase": Command(
        "fit LEACE erasers on a checkpoint, retrain its heads, save a new one",
        "mtl_lightning.erase:main",
    ),
    "groups": Command(
        "choose task groups from a TaskAffinity file (TAG network selection)",
        "mtl_lightning.groups:run",
    ),
    "compare": Command(
        "train each task alone vs all tasks together (and groups); one table",
        "mtl_lightning.compare:run",
    ),
}


def usage() -> str:
    """The text of ``python -m mtl_lightning --help``: every command with its help line.

    Example:
        >>> print(usage().splitlines()[0])
        usage: python -m mtl_lightning <command> [options]
    """
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: {PROG} <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", f"`{PROG} <command> --help` lists a command's options."]
    return "\n".join(lines)


def main(args: Sequence[str] | None = None, run: bool = True) -> Any:
    """Entry point of ``python -m mtl_lightning``; ``args`` defaults to ``sys.argv[1:]``.

    Options before any command (``--config x.yaml fit``) go to LightningCLI, as it accepts.
    Returns what the command returns: the :class:`~mtl_lightning.cli.MultiTaskCLI` of a
    LightningCLI command (not run when ``run`` is false), the result of the others.

    Raises:
        SystemExit: with ``--help`` or no command (status 0 / 2), or an unknown command
            (status 2, the known ones listed).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    command = COMMANDS["fit"] if argv[0].startswith("-") else COMMANDS.get(argv[0])
    if command is None:
        print(usage(), file=sys.stderr)
        known = ", ".join(COMMANDS)
        print(f"\n{PROG}: unknown command {argv[0]!r}; the commands are {known}", file=sys.stderr)
        raise SystemExit(2)
    if command.lightning:
        return command.load()(argv, from_command_line=args is None, run=run)
    return command.load()(argv[1:])
