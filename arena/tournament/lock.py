"""One driver per output directory.

Two drivers on one directory would both run every remaining cell (each sees the other's cells as
unfinished until their rows land) and race on the same stage files. The lock is a small JSON file made
with ``O_EXCL``, so exactly one of two simultaneous starts wins; it names its holder so the refused
driver can say who to wait for. A lock left by a driver that died (its pid is gone on this host) is
taken over with a warning instead of blocking the directory forever; a lock from another host cannot be
checked from here and is always respected.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..params import ArenaError

LOCK_NAME = ".arena-driver.lock"


class LockHeld(ArenaError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(started {holder.get('started', '?')})")


class DriverLock:
    """``with DriverLock(out_dir):`` holds the directory for the body; released on exit."""

    def __init__(self, out_dir: Path, warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.warn = warn or (lambda line: None)
        self.me = {"host": socket.gethostname(), "pid": os.getpid(),
                   "started": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}
        self.held = False

    def _read(self) -> dict[str, Any]:
        try:
            value = json.loads(self.path.read_text())
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed under us by another starter: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                pid = holder.get("pid")
                stale = holder.get("host") == self.me["host"] and isinstance(pid, int) and not _alive(pid)
                if not stale:
                    raise LockHeld(f"{self.path.parent}: another tournament driver holds this output directory: "
                                   f"{_describe(holder)}; wait for it to finish, or remove {self.path} if it "
                                   "is gone") from None
                self.warn(f"{self.path}: taking over the lock of a driver that is no longer running "
                          f"({_describe(holder)})")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            self.held = True
            return
        raise LockHeld(f"{self.path}: could not take the driver lock (it keeps reappearing)")

    def release(self) -> None:
        if self.held and self._read().get("pid") == self.me["pid"]:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.held = False

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
