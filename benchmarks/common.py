"""What the benchmark scripts share: one way to report a result row (stdout line + optional JSONL file)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from arena.progress import RichProgress


def progress() -> RichProgress:
    """Rich progress bars for the protect, purify and train stages: a CPU-sized benchmark runs for an hour
    and should say where it is (the arena's Context is silent by default)."""
    from arena.progress import RichProgress

    return RichProgress()


def emit(row: dict[str, Any], out: str | None) -> None:
    """Print ``RESULT <json>`` (greppable from a log) and append the row to ``out`` when given, so a long
    run that dies keeps every row it finished."""
    line = json.dumps(row, default=str)
    print("RESULT " + line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def splits_for(dataset: str, size: int, root: str | None, train: int | None, test: int | None, seed: int) -> Any:
    """The benchmark's splits, loaded the way a tournament loads them (``size`` only for loaders that take it;
    ``root`` falls back to ``$ARENA_DATA``); 0 or None for ``train``/``test`` means the whole split."""
    from arena.commands.common import load_splits
    from arena.registry import get_registry

    loader = get_registry().dataset(dataset)
    params = {"size": size} if "size" in {p.name for p in loader.params.params} else {}
    return load_splits(dataset, params, root if loader.needs_root else None, False, train or None, test or None,
                       0.1, seed)
