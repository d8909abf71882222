"""A protector whose worker process dies the first time it runs in an output directory: the fault the
scheduler must retry (a node or actor going away), not a plugin error."""

from __future__ import annotations

import os
import signal

from arena import Budget, Protector, hookimpl


class DiesOnce(Protector):
    name = "test-dies-once"

    def budget(self, train):
        return Budget("linf", 8 / 255)

    def protect(self, train, ctx):
        ctx.scratch.mkdir(parents=True, exist_ok=True)
        marker = ctx.scratch / "died-once"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process is gone, as when its node is lost
        return train.images.clone()


class Hog:
    """A Ray actor that holds resources so that no stage actor can be placed (importable by workers)."""

    def ping(self) -> bool:
        return True


@hookimpl
def arena_register_protectors(register):
    register(DiesOnce)
