"""Test setup: only this distribution's own plugins load, so a third-party plugin installed on the
machine cannot leak into the results; caches go to a per-session temporary directory."""

from __future__ import annotations

import importlib.metadata as md
import os
import tempfile

import pytest

_own = sorted(ep.name for ep in md.distribution("unlearnable-arena").entry_points if ep.group == "arena")
os.environ["ARENA_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ["ARENA_PLUGINS"] = ",".join(_own)
os.environ.setdefault("ARENA_CACHE", tempfile.mkdtemp(prefix="arena-test-cache-"))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def digits16():
    """digits at 16 px with the default splits: the cheap real data set of the suite."""
    from arena import make_splits
    from arena.registry import get_registry

    train, test = get_registry().dataset("digits").load(size=16)
    return make_splits(train, test, seed=0)


@pytest.fixture(scope="session")
def digits32():
    from arena import make_splits
    from arena.registry import get_registry

    train, test = get_registry().dataset("digits").load(size=32)
    return make_splits(train, test, seed=0)
