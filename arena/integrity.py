"""Content hashes of stored image sets, and the two ways integrity can fail.

Stored splits and stage outputs are what every later cell trusts: a changed byte would silently move
every row built on it. So each stored ``.npz`` has its content hash in a manifest or sidecar, written by
the arena when it stores the file and checked whenever the arena loads it.

Hashing is SHA-256 over the uint8 pixel bytes, the labels, the class names and the origin: on this
project's CPUs (SHA extensions) it runs at ~1.7 GB/s, twice blake2b, so CIFAR-10's 150 MB train split
costs ~0.09 s, about what ``np.load`` of it costs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .data import ImageSet
from .params import ArenaError


class IntegrityError(ArenaError):
    """Stored data no longer matches its recorded hash: the run stops, because every row built on it
    would be wrong."""


class IntegrityViolation(ArenaError):
    """Plugin code broke an invariant the arena checks (read protected storage, changed data it was not
    given, ``none`` output differing from the clean split): its cell is recorded with status ``integrity``."""


def content_hash(data: ImageSet) -> str:
    """SHA-256 of what defines an image set: pixels, labels, classes, origin."""
    h = hashlib.sha256()
    h.update(memoryview(data.images.contiguous().numpy()).cast("B"))
    h.update(memoryview(data.labels.contiguous().numpy()).cast("B"))
    h.update(json.dumps([list(data.classes), data.origin]).encode())
    return h.hexdigest()


def load_verified(path: Path, expected: str | None) -> ImageSet:
    """Load a stored image set and check it against its recorded hash (one-line error naming the file)."""
    path = Path(path)
    if not expected:
        raise IntegrityError(f"{path}: no content hash recorded for this file; remove it to recompute")
    try:
        data = ImageSet.load(path)
    except Exception as e:  # truncated, not an npz, missing arrays: all mean "not what we stored"
        raise IntegrityError(f"{path}: unreadable ({type(e).__name__}); remove it to recompute") from None
    if content_hash(data) != expected:
        raise IntegrityError(f"{path}: content does not match its recorded hash (changed after it was stored); "
                             "remove it to recompute")
    return data
