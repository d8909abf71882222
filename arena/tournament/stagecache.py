"""On-disk stage outputs under content keys.

An output is complete only when its ``.json`` sidecar exists; the sidecar is written (atomically)
after the arrays, so a process killed at any moment leaves either a finished entry or one that is
recomputed, never one that is read half-written. The sidecar records the output's content hash, and
every load checks it: a changed file stops the run (:class:`arena.integrity.IntegrityError`).

The data splits live under ``data/<key>/`` with a ``manifest.json`` of their hashes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageSet
from ..integrity import IntegrityError, content_hash
from ..storage import Storage

SPLITS = ("train", "raw", "test")
STAGES = ("protect", "purify")


def _to_bytes(data: ImageSet) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=data.images.numpy(), labels=data.labels.numpy(),
             classes=np.array(data.classes, dtype=object), origin=np.array(data.origin))
    return buf.getvalue()


class StageCache:
    """``root`` is a local directory, a URI or a :class:`arena.storage.Storage`; ``root`` stays the local
    path (None for an object store) for code that guards or inspects local files."""

    def __init__(self, root: Path | str | Storage) -> None:
        self.store = root if isinstance(root, Storage) else Storage(root)
        self.root: Path | None = self.store.local_path
        self.uri = self.store.uri
        self.rows: Storage | None = None  # the tournament's row storage, when the driver set it

    def _where(self, rel: str) -> str:
        return str(self.root / rel) if self.root is not None else self.store.url(rel)

    def _paths(self, stage: str, key: str) -> tuple[str, str]:
        return f"{stage}/{key}.npz", f"{stage}/{key}.json"

    def _json(self, rel: str) -> Any:
        return json.loads(self.store.read_bytes(rel))

    def _write_json(self, rel: str, value: dict[str, Any]) -> None:
        self.store.write_bytes(rel, json.dumps(value, default=float).encode())

    def _load_verified(self, rel: str, expected: str | None) -> ImageSet:
        """Load a stored image set and check it against its recorded hash (one line naming the file)."""
        where = self._where(rel)
        if not expected:
            raise IntegrityError(f"{where}: no content hash recorded for this file; remove it to recompute")
        try:
            data = ImageSet.load(io.BytesIO(self.store.read_bytes(rel)))  # type: ignore[arg-type]
        except Exception as e:  # missing, truncated, not an npz: all mean "not what we stored"
            raise IntegrityError(f"{where}: unreadable ({type(e).__name__}); remove it to recompute") from None
        if content_hash(data) != expected:
            raise IntegrityError(f"{where}: content does not match its recorded hash (changed after it was stored); "
                                 "remove it to recompute")
        return data

    def has(self, stage: str, key: str) -> bool:
        """A sidecar without a content hash (written before hashes existed) counts as absent: recomputed."""
        try:
            return bool(self._json(self._paths(stage, key)[1]).get("content_hash"))
        except (ValueError, OSError, AttributeError):
            return False

    def meta(self, stage: str, key: str) -> dict[str, Any]:
        return self._json(self._paths(stage, key)[1])

    def load(self, stage: str, key: str) -> ImageSet:
        npz, js = self._paths(stage, key)
        try:
            expected = self._json(js).get("content_hash")
        except (ValueError, OSError, AttributeError):
            raise IntegrityError(f"{self._where(js)}: unreadable stage sidecar; remove it to recompute") from None
        return self._load_verified(npz, expected)

    def save(self, stage: str, key: str, data: ImageSet, meta: dict[str, Any]) -> None:
        npz, js = self._paths(stage, key)
        self.store.write_bytes(npz, _to_bytes(data))
        self._write_json(js, {**meta, "content_hash": content_hash(data)})

    def data_dir(self, data_key: str) -> Path:
        """The splits' local directory (local storage only)."""
        if self.root is None:
            raise ValueError(f"{self.uri}: not a local directory")
        return self.root / "data" / data_key

    # -- the clean splits ------------------------------------------------------------------------
    def has_splits(self, data_key: str) -> bool:
        return self.store.exists(f"data/{data_key}/manifest.json")

    def split_hashes(self, data_key: str) -> dict[str, str]:
        m = f"data/{data_key}/manifest.json"
        try:
            return self._json(m)["hashes"]
        except (OSError, ValueError, KeyError, TypeError):
            raise IntegrityError(f"{self._where(m)}: missing or unreadable split manifest; remove "
                                 f"{self._where(f'data/{data_key}')} to recompute") from None

    def store_splits(self, data_key: str, splits: Any) -> None:
        """Store the splits (the driver holds them fresh from the data set) or check the stored ones.

        A stored file that differs from the fresh split was changed after it was written: stop rather
        than rewrite, so whoever changed it is noticed."""
        hashes = {name: content_hash(getattr(splits, name)) for name in SPLITS}
        for name in SPLITS:
            rel = f"data/{data_key}/{name}.npz"
            if self.store.exists(rel):
                self._load_verified(rel, hashes[name])
            else:
                self.store.write_bytes(rel, _to_bytes(getattr(splits, name)))
        self._write_json(f"data/{data_key}/manifest.json", {"hashes": hashes})

    def load_split(self, data_key: str, name: str) -> ImageSet:
        return self._load_verified(f"data/{data_key}/{name}.npz", self.split_hashes(data_key).get(name))

    # -- checking everything stored -------------------------------------------------------------------
    def verify(self) -> tuple[int, list[str]]:
        """(files checked, one line per bad file): every split against its manifest and every stage output
        against its sidecar, through the storage, so an object store is checked like a directory."""
        checked, bad = 0, []
        for key in sorted({rel.split("/")[1] for rel in self.store.list("data", recursive=True) if rel.count("/") >= 2}):
            try:
                hashes = self.split_hashes(key)
            except IntegrityError:
                bad.append(f"{self._where(f'data/{key}/manifest.json')}: missing or unreadable split manifest")
                continue
            for name, h in sorted(hashes.items()):
                checked += 1
                try:
                    self._load_verified(f"data/{key}/{name}.npz", h)
                except IntegrityError as e:
                    bad.append(str(e))
        for stage in STAGES:
            for js in (rel for rel in self.store.list(stage) if rel.endswith(".json")):
                checked += 1
                try:
                    expected = self._json(js).get("content_hash")
                except (OSError, ValueError, AttributeError):
                    bad.append(f"{self._where(js)}: unreadable stage sidecar")
                    continue
                if expected is None:  # written before hashes existed: the next run recomputes it, not an error
                    continue
                try:
                    self._load_verified(js[: -len(".json")] + ".npz", expected)
                except IntegrityError as e:
                    bad.append(str(e))
        return checked, bad
