"""Test setup: only this distribution's own plugins load, so a third-party plugin installed on the
machine cannot leak into the results; caches go to a per-session temporary directory."""

from __future__ import annotations

import importlib.metadata as md
import os
import tempfile

import pytest
import torch

from arena.progress import Progress

_own = sorted(ep.name for ep in md.distribution("unlearnable-arena").entry_points if ep.group == "arena")
os.environ["ARENA_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ["ARENA_PLUGINS"] = ",".join(_own)
_cache = tempfile.TemporaryDirectory(prefix="arena-test-cache-")  # removed when the test session exits
os.environ.setdefault("ARENA_CACHE", _cache.name)
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


@pytest.fixture(scope="module")
def one_thread():
    """The test machine's two cores are shared; one thread per process is several times faster there.
    Modules that train opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Recorder(Progress):
    """Keeps every task's description, declared total, advances and whether it was closed."""

    def __init__(self) -> None:
        self.tasks: list[dict] = []

    def task(self, description: str, total: int | None = None):
        rec = {"description": description, "total": total, "advanced": 0, "closed": False}
        self.tasks.append(rec)

        class _T:
            def advance(self, n: int = 1, **info) -> None:
                rec["advanced"] += n

            def close(self) -> None:
                rec["closed"] = True

        return _T()



@pytest.fixture(scope="module")
def ray_local():
    """An embedded Ray instance for one test module, started from the checkout root so workers import the
    ``tests.*`` plugin modules the tournaments name."""
    from pathlib import Path

    import ray

    from arena.tournament.runner import _init_ray

    os.chdir(Path(__file__).resolve().parents[1])
    _init_ray(None, None)
    yield
    ray.shutdown()
