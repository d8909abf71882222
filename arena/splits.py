"""Build a data set's threat-model splits by registry name: shared by the CLI and the tournament engine,
so the engine never imports from ``arena.commands``."""

from __future__ import annotations

from typing import Any

from .data import Splits, make_splits, resolve_root
from .registry import get_registry


def load_splits(dataset: str, params: dict[str, Any], root: str | None, download: bool, train_size: int | None,
                test_size: int | None, raw_fraction: float, seed: int) -> Splits:
    loader = get_registry().dataset(dataset)
    opts = loader.params.validate(params, owner=f"dataset '{dataset}'")
    path = resolve_root(root, dataset)
    train, test = loader.load(root=path, download=download, **opts)
    return make_splits(train, test, train_size=train_size, test_size=test_size, raw_fraction=raw_fraction, seed=seed)
