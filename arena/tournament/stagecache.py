"""On-disk stage outputs under content keys.

An output is complete only when its ``.json`` sidecar exists; the sidecar is written (atomically)
after the arrays, so a process killed at any moment leaves either a finished entry or one that is
recomputed, never one that is read half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..data import ImageSet


class StageCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _paths(self, stage: str, key: str) -> tuple[Path, Path]:
        d = self.root / stage
        return d / f"{key}.npz", d / f"{key}.json"

    def has(self, stage: str, key: str) -> bool:
        return self._paths(stage, key)[1].exists()

    def meta(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads(self._paths(stage, key)[1].read_text())

    def load(self, stage: str, key: str) -> ImageSet:
        return ImageSet.load(self._paths(stage, key)[0])

    def save(self, stage: str, key: str, data: ImageSet | None, meta: dict[str, Any]) -> None:
        npz, js = self._paths(stage, key)
        js.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            data.save(npz)
        tmp = js.with_name(f".tmp-{os.getpid()}-{js.name}")
        tmp.write_text(json.dumps(meta, default=float))
        os.replace(tmp, js)

    def data_dir(self, data_key: str) -> Path:
        return self.root / "data" / data_key
