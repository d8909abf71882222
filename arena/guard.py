"""Refuse plugin code access to the arena's stored data, with a PEP 578 audit hook.

While a worker runs plugin code (constructors, ``budget``, ``protect``, ``purify``, ``training_mod`` and
the training steps it changes), opening, listing, renaming or deleting anything under the guarded roots
(the stored splits, the stage outputs, the decoded data-set cache) is refused and recorded. The refusal
is an exception inside the plugin, which a cheat could swallow, so the guard also remembers it and fails
the stage when the plugin returns, whatever the plugin did with the exception.

An audit hook sees Python-level file access only: ctypes, a C extension or a child process can still
reach the files. Those are what the content hashes (``arena.integrity``) detect, and what code review
has to catch (README "Threat model").

The hook is installed once per process (audit hooks cannot be removed) and does nothing outside
:func:`plugin_code`, so the arena's own loads are unaffected and the cost elsewhere is one dict lookup
per audit event.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .integrity import IntegrityViolation

# audit event -> positions of the path arguments to check
EVENTS: dict[str, tuple[int, ...]] = {
    "open": (0,), "os.listdir": (0,), "os.scandir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (0, 1), "os.remove": (0,), "os.rmdir": (0,), "os.truncate": (0,), "os.chmod": (0,),
    "os.chown": (0,), "os.utime": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (0, 1), "shutil.move": (0, 1),
}


class _State:
    installed = False
    roots: tuple[str, ...] = ()
    who = ""
    breach: str | None = None


_local = threading.local()


def _guarded(path: object) -> str | None:
    if path is None or isinstance(path, int):  # a file descriptor: already opened by someone else
        return None
    try:
        real = os.path.realpath(os.fsdecode(os.fspath(path)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    for r in _State.roots:
        if real == r or real.startswith(r + os.sep):
            return real
    return None


def _hook(event: str, args: tuple) -> None:
    if not _State.roots:
        return
    positions = EVENTS.get(event)
    if positions is None or getattr(_local, "busy", False):
        return
    _local.busy = True  # realpath itself must not re-enter the hook
    try:
        for i in positions:
            real = _guarded(args[i]) if i < len(args) else None
            if real is not None:
                msg = (f"{_State.who} tried to access the arena's stored data ({event} {real}); plugin code "
                       "may not read or change stored splits or stage outputs")
                _State.breach = _State.breach or msg
                raise IntegrityViolation(msg)
    finally:
        _local.busy = False


def install() -> None:
    if not _State.installed:
        sys.addaudithook(_hook)
        _State.installed = True


@contextmanager
def plugin_code(who: str, roots: Iterable[Path | str]) -> Iterator[None]:
    """Run the body as plugin code: accesses under ``roots`` are refused and fail the stage on exit
    with :class:`IntegrityViolation` (a cell status ``integrity``)."""
    install()
    saved = (_State.roots, _State.who, _State.breach)
    _State.roots = tuple(os.path.realpath(str(r)) for r in roots)
    _State.who, _State.breach = who, None
    try:
        yield
    finally:
        breach = _State.breach
        _State.roots, _State.who, _State.breach = saved
        if breach:
            raise IntegrityViolation(breach)  # wins over whatever the plugin raised or swallowed
