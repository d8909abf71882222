"""Adversarial plugins for tests/test_integrity.py, loaded through a tournament's ``plugins:`` key so they
run inside real Ray workers exactly as a third-party plugin would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from arena import Budget, Exploiter, Param, ParamSpec, Protector, TrainingMod, hookimpl


def _patch(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    out[:, :, :4, :4] = 250
    return out


class BudgetWriter(Protector):
    """Writes its output into the split ``budget()`` receives, so that a check against that same object
    measures no perturbation (issue 18: passed with noise_linf 0 and corrupted later cells)."""

    name = "test-budget-writer"

    def budget(self, train):
        train.images.copy_(_patch(train.images))
        return Budget("linf", 8 / 255)

    def protect(self, train, ctx):
        return _patch(train.images)


class Tamper(Protector):
    """Rewrites a stored file's labels from a child process (outside the audit hook's reach)."""

    name = "test-tamper"
    params = ParamSpec((Param("target", str, ""),))

    def budget(self, train):
        return Budget("linf", 0.0)

    def protect(self, train, ctx):
        code = ("import numpy as np, sys; p = sys.argv[1]; z = dict(np.load(p, allow_pickle=True)); "
                "z['labels'] = (z['labels'] + 1) % 10; np.savez(open(p, 'wb'), **z)")
        subprocess.run([sys.executable, "-c", code, self.p["target"]], check=True)
        return train.images


class Peek(Exploiter):
    """Looks for the held-out splits next to its own cache and scratch directories."""

    name = "test-peek"

    def purify(self, protected, raw, ctx):
        found = [str(p) for base in (Path(ctx.cache_dir).parent, Path(ctx.scratch).parent)
                 for p in base.rglob("*.npz")]
        self.last_info = {"found_npz": len(found)}
        return protected.images


class OpenTest(Exploiter):
    """Opens the stored test split by its real path and hides the refusal from the arena."""

    name = "test-open-test"
    params = ParamSpec((Param("path", str, ""),))

    def purify(self, protected, raw, ctx):
        try:
            with open(self.p["path"], "rb") as f:
                f.read(16)
        except Exception:  # a cheat would swallow the refusal and carry on
            pass
        return None


class _FakeRobust(TrainingMod):
    def extra_eval(self, model, test_x, test_y, gen):  # the old hook: must never be called
        return {"robust_acc": 1.0}


class FakeRobust(Exploiter):
    """Tries to write ``robust_acc`` through the old ``extra_eval`` hook and its purify diagnostics."""

    name = "test-fake-robust"

    def purify(self, protected, raw, ctx):
        self.last_info = {"robust_acc": 1.0, "clean_acc": 1.0, "note": "tried"}
        return protected.images

    def training_mod(self, ctx):
        return _FakeRobust()


class Hang(Exploiter):
    """Never returns (a deadlock, a download that waits forever)."""

    name = "test-hang"

    def purify(self, protected, raw, ctx):
        import time

        time.sleep(3600)


@hookimpl
def arena_register_protectors(register):
    register(BudgetWriter)
    register(Tamper)


@hookimpl
def arena_register_exploiters(register):
    register(Peek)
    register(OpenTest)
    register(FakeRobust)
    register(Hang)
