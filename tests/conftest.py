"""Test setup: only this distribution's own plugins load, so a third-party plugin installed on the
machine cannot leak into the results; caches go to a per-session temporary directory."""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
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
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pyproject's addopts run the suite on two xdist workers, one per core of the test machine: one thread each
    # (modules that train already ask for one; see one_thread). Tests that need to be alone or to share an
    # expensive fixture say so with ``xdist_group``: "ray" for every test that starts Ray, so one embedded
    # instance runs at a time, and a module's name where its tests share a module- or session-scoped result.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cli_server():
    """Stops the forking CLI server of tests/cli_runner.py at the end of the session; the first ``run_cli``
    starts it, so a session that never runs the CLI never pays for it."""
    yield
    runner = sys.modules.get("tests.cli_runner")  # imported by the test modules that run the CLI
    if runner is not None:
        runner.shutdown()


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


# Sample-wise EMN as tests/test_emn.py runs it: 16/255 (the quick grid's radius on digits) with 5 PGD steps of
# 0.025 (a travel of twice the radius, like the paper's 20 steps of eps/10) and a cnn-small surrogate. Measured on
# this split, victim seed 0, 10 epochs, one 2-core AMD EPYC: clean 93.0 %, EMN 14.4 % (test_emn's bar: 35 %),
# grayscale-purified 77.7 % (test_exploiters' bar: 53.7 %), in about half the time of the paper's 8/255 with
# 20 steps and a 15-epoch victim, which left EMN at 31.0 %, 4 points from the bar.
EMN_SAMPLEWISE = {"surrogate": "cnn-small", "eps": 16 / 255, "pgd_steps": 5, "step": 0.025}
# The EMN tests' victim: pad 2 at 16 px = the usual pad 4 at 32 px; float32 so the accuracy bars do not depend on
# whether this CPU has native bf16 (the recipe's ``auto`` turns bf16 on where it has).
EMN_VICTIM = {"epochs": 10, "batch_size": 128, "crop_pad": 2, "amp": "off"}


@pytest.fixture(scope="session")
def clean16_acc(digits16) -> float:
    """The clean accuracy of the EMN_VICTIM recipe's cnn-small (seed 0, one thread) on digits16: the clean
    reference of emn_digits (test_emn, test_exploiters) and of test_shortcut_protectors, which train exactly
    this victim on exactly this split, so one session trains it once."""
    from arena import Recipe, train_victim
    from arena.models import build_model

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_thread
    try:
        model = build_model("cnn-small", digits16.train.num_classes, 3, digits16.train.shape[1], seed=0)
        return train_victim(model, digits16.train, digits16.test, Recipe(**EMN_VICTIM), seed=0).clean_acc
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def emn_digits(digits16, clean16_acc, tmp_path_factory):
    """Sample-wise EMN on digits16 and the victim's clean accuracy on the clean and the protected split,
    computed once for the session: it is the suite's most expensive protection, and test_emn (does it
    protect) and test_exploiters (does ISS undo it) ask the same question of the same images."""
    from arena import Context, Recipe, check_budget, train_victim
    from arena.models import build_model
    from arena.registry import get_registry

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_thread
    try:
        tmp = tmp_path_factory.mktemp("emn-samplewise")
        recipe = Recipe(**EMN_VICTIM)

        def acc(data) -> float:
            model = build_model("cnn-small", data.num_classes, 3, data.shape[1], seed=0)
            return train_victim(model, data, digits16.test, recipe, seed=0).clean_acc

        prot = get_registry().protector("emn-samplewise", EMN_SAMPLEWISE)
        out = prot.protect(digits16.train, Context(seed=0, scratch=tmp / "scratch", cache_dir=tmp / "cache",
                                                   progress=Progress()))
        check_budget(prot.budget(digits16.train), digits16.train.images, out.images, "emn-samplewise")
        return {"protector": prot, "protected": out, "dir": tmp, "recipe": recipe,
                "clean": clean16_acc, "emn": acc(out)}
    finally:
        torch.set_num_threads(n)


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
