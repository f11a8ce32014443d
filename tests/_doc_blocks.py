"""Run a documentation page as a user would: its files written, its code and commands run.

Fenced blocks with a ``title="name"`` are files (written into the page's work directory);
untitled ``python`` blocks run in one namespace, in order; ``bash`` blocks run in ``bash -e``;
any other language (``text``, ``console``, ``csv``) is shown output, not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.M | re.S)
TITLE = re.compile(r'title="([^"]+)"')


@dataclass(frozen=True)
class Block:
    language: str
    title: str | None
    code: str


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    found = []
    for language, info, code in FENCE.findall(page.read_text()):
        title = TITLE.search(info)
        found.append(Block(language, title.group(1) if title else None, code))
    return found


def run_page(page: Path, workdir: Path, timeout: float = 300) -> list[str]:
    """Write, run and execute every block of ``page`` in ``workdir``; the commands' output."""
    outputs: list[str] = []
    namespace: dict[str, object] = {"__name__": "__doc_page__"}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for block in blocks(page):
            if block.title is not None:
                target = workdir / block.title
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.code)
            elif block.language == "python":
                exec(compile(block.code, f"{page.name}:python", "exec"), namespace)
            elif block.language == "bash":
                outputs.append(_bash(block.code, workdir, timeout))
    finally:
        os.chdir(cwd)
    return outputs


def _bash(code: str, workdir: Path, timeout: float) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"`{code.strip()}` exited {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr
