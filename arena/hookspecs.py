"""Hook specifications of the `arena` pluggy project.

Registration hooks hand the plugin a ``register`` callable (datasette/llm style) so one module can
register several objects and the registry can record where each one came from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "arena"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def arena_register_protectors(register: Callable[[Any], None]) -> None:
    """Register protector classes (subclasses of :class:`arena.Protector`)."""


@hookspec
def arena_register_exploiters(register: Callable[[Any], None]) -> None:
    """Register exploiter classes (subclasses of :class:`arena.Exploiter`)."""


@hookspec
def arena_register_architectures(register: Callable[..., None]) -> None:
    """Register model builders: ``register(name, builder)`` with ``builder(num_classes, in_channels, image_size)``."""


@hookspec
def arena_register_datasets(register: Callable[..., None]) -> None:
    """Register dataset loaders: ``register(name, loader)``; see :mod:`arena.data` for the loader contract."""


@hookspec
def arena_cell_finished(row: dict) -> None:
    """Observer: called on the driver with the leaderboard row of every finished cell (ok, failed, invalid),
    after the row is written. An observer that raises is reported in one line and skipped; the tournament
    and the other observers go on."""
