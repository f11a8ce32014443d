"""The subcommand table: every command runs from one place, with its own ``--help``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mtl_lightning.commands import COMMANDS, PROG, main, usage

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_loads_and_is_listed():
    for name, command in COMMANDS.items():
        assert callable(command.load()), name
        assert f"  {name}  " in usage() or f"  {name} " in usage(), name
        assert command.help in usage()


# LightningCLI builds one parser for all four of its commands: one of them stands for all
# (test_cli checks `fit --help` and the usage line of the real command line)
@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if not c.lightning] + ["test"])
def test_every_command_has_a_help_page_under_its_own_name(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    if COMMANDS[name].lightning:  # in process, LightningCLI names sys.argv[0] (test_cli: PROG)
        assert f"{name} [-c CONFIG]" in out
    else:
        assert f"usage: {PROG} {name}" in out


def test_unknown_command_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fti"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'fti'" in err
    assert all(name in err for name in COMMANDS)


def test_no_command_prints_the_usage_and_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert capsys.readouterr().out.startswith(f"usage: {PROG} <command>")


def test_no_module_of_the_package_imports_the_dispatcher():
    """No import circle: the table imports the command modules (lazily), never the reverse;
    only ``__main__`` imports the table."""
    importers = []
    for path in sorted((ROOT / "mtl_lightning").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if "mtl_lightning.commands" in names:
                importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["mtl_lightning/__main__.py"]
