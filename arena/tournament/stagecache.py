"""On-disk stage outputs under content keys.

An output is complete only when its ``.json`` sidecar exists; the sidecar is written (atomically)
after the arrays, so a process killed at any moment leaves either a finished entry or one that is
recomputed, never one that is read half-written. The sidecar records the output's content hash, and
every load checks it: a changed file stops the run (:class:`arena.integrity.IntegrityError`).

The data splits live under ``data/<key>/`` with a ``manifest.json`` of their hashes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..data import ImageSet
from ..integrity import IntegrityError, content_hash, load_verified

SPLITS = ("train", "raw", "test")
STAGES = ("protect", "purify")


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(value, default=float))
    os.replace(tmp, path)


class StageCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _paths(self, stage: str, key: str) -> tuple[Path, Path]:
        d = self.root / stage
        return d / f"{key}.npz", d / f"{key}.json"

    def has(self, stage: str, key: str) -> bool:
        """A sidecar without a content hash (written before hashes existed) counts as absent: recomputed."""
        js = self._paths(stage, key)[1]
        if not js.exists():
            return False
        try:
            return bool(json.loads(js.read_text()).get("content_hash"))
        except (ValueError, OSError):
            return False

    def meta(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads(self._paths(stage, key)[1].read_text())

    def load(self, stage: str, key: str) -> ImageSet:
        npz, js = self._paths(stage, key)
        try:
            expected = json.loads(js.read_text()).get("content_hash")
        except (ValueError, OSError):
            raise IntegrityError(f"{js}: unreadable stage sidecar; remove it to recompute") from None
        return load_verified(npz, expected)

    def save(self, stage: str, key: str, data: ImageSet, meta: dict[str, Any]) -> None:
        npz, js = self._paths(stage, key)
        data.save(npz)
        _write_json(js, {**meta, "content_hash": content_hash(data)})

    def data_dir(self, data_key: str) -> Path:
        return self.root / "data" / data_key

    # -- the clean splits ------------------------------------------------------------------------
    def split_hashes(self, data_key: str) -> dict[str, str]:
        m = self.data_dir(data_key) / "manifest.json"
        try:
            return json.loads(m.read_text())["hashes"]
        except (OSError, ValueError, KeyError, TypeError):
            raise IntegrityError(f"{m}: missing or unreadable split manifest; remove "
                                 f"{self.data_dir(data_key)} to recompute") from None

    def store_splits(self, data_key: str, splits: Any) -> None:
        """Store the splits (the driver holds them fresh from the data set) or check the stored ones.

        A stored file that differs from the fresh split was changed after it was written: stop rather
        than rewrite, so whoever changed it is noticed."""
        d = self.data_dir(data_key)
        hashes = {name: content_hash(getattr(splits, name)) for name in SPLITS}
        for name in SPLITS:
            f = d / f"{name}.npz"
            if f.exists():
                load_verified(f, hashes[name])
            else:
                getattr(splits, name).save(f)
        _write_json(d / "manifest.json", {"hashes": hashes})

    def load_split(self, data_key: str, name: str) -> ImageSet:
        return load_verified(self.data_dir(data_key) / f"{name}.npz", self.split_hashes(data_key).get(name))
