"""In a source checkout, ``arena_plugins`` is the folder ``plugins/`` beside the ``arena/`` that was imported.

Why: the built-in plugins install under the name ``arena_plugins`` (``package-dir`` in pyproject.toml) so
that a user's own ``plugins/`` folder, which Ray workers put first on ``sys.path``, cannot shadow them.
No directory on ``sys.path`` provides that name in a checkout: an editable install maps it to the checkout
that was installed. A second checkout (a git worktree) that runs ``python -m pytest`` or ``python -m
arena.cli`` imports its own ``arena`` from the working directory but would then get the *installed*
checkout's plugins, in the test process, in its subprocesses and in local Ray workers alike, and test or
run code it does not contain. Mapping the one name here, where ``arena`` itself is imported, keeps the
core and its built-ins from one tree in every process. A conftest would reach only the pytest process; a
symlink ``arena_plugins -> plugins`` would add to the fixed top level and breaks on Windows checkouts.
An installed wheel has no ``plugins/`` beside ``arena/``, so nothing changes there.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

NAME = "arena_plugins"
_ROOT = Path(__file__).resolve().parent.parent
_DIR = _ROOT / "plugins"


class _CheckoutPlugins(importlib.abc.MetaPathFinder):
    """Finds the package ``arena_plugins`` only; its modules are found through its ``__path__`` as usual."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(NAME, _DIR / "__init__.py", submodule_search_locations=[str(_DIR)])


def is_checkout(root: Path = _ROOT) -> bool:
    """A checkout of this project: its pyproject.toml names this distribution and ``plugins/`` is a package."""
    project = root / "pyproject.toml"
    try:
        named = 'name = "unlearnable-arena"' in project.read_text(encoding="utf-8")
    except OSError:
        return False
    return named and (root / "plugins" / "__init__.py").is_file()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (before an editable install's) when ``arena`` is a checkout."""
    if any(isinstance(f, _CheckoutPlugins) for f in sys.meta_path) or not is_checkout():
        return
    sys.meta_path.insert(0, _CheckoutPlugins())
