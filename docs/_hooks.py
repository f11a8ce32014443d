"""MkDocs hooks: the notebooks of ``notebooks/`` on the site, executed in a scratch directory.

The notebooks stay where the tests run them (``notebooks/``); the site gets them as pages under
``notebooks/``, executed by mkdocs-jupyter on their small settings (the first code cell, tagged
``parameters``) with one torch thread and a non-interactive Matplotlib backend, as
``tests/test_notebooks.py`` runs them. Everything they write goes into ``tempfile.mkdtemp``
directories, which the kernels create under a scratch directory that is removed after the build,
so a build leaves nothing in the repository but ``site/`` (and mkdocs-jupyter's cache).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import griffe
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
_scratch: list[str] = []
_SINGULAR = re.compile(r"^Example(?:[ \t]*\((.*)\))?:[ \t]*$", re.M)
#: a Sphinx role (``:class:`~a.b.C` ``, ``:func:`a.f` ``, ``:meth:`C.m <a.C.m>` ``)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`<]+?)(?:\s*<[^`>]+>)?`")


def _role(match: re.Match[str]) -> str:
    """``:class:`~a.b.C` `` -> `` `C` `` (``~``: the last name only), as inline code."""
    short, target = match.group(1), match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _examples(match: re.Match[str]) -> str:
    title = match.group(1)
    return f"{title[:1].upper()}{title[1:]}:\n\nExamples:" if title else "Examples:"


class DoctestExamples(griffe.Extension):
    """Read a Google-style ``Example:`` (or ``Example (what it shows):``) section as
    ``Examples:``, so its ``>>>`` lines are shown as code, not as Markdown, and show the
    docstrings' Sphinx roles as inline code instead of their raw markup
    (mkdocstrings-python's ``extensions: [docs/_hooks.py:DoctestExamples]``)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            value = _SINGULAR.sub(_examples, obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_role, value)


def on_config(config):
    tempfile.gettempdir()  # fixes this process's own temp dir before TMPDIR changes below
    scratch = tempfile.mkdtemp(prefix="mtl_lightning_docs_")
    _scratch.append(scratch)
    # the notebook kernels inherit these (tests/test_notebooks.py sets the same)
    os.environ.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", TMPDIR=scratch)
    return config


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into notebook pages
def on_files(files, config):
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{notebook.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def _clean() -> None:
    while _scratch:
        shutil.rmtree(_scratch.pop(), ignore_errors=True)


def on_post_build(config):
    _clean()


def on_build_error(error):
    _clean()


def on_shutdown():
    _clean()
