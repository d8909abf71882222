"""The rows of one tournament's current grid, for ``arena leaderboard DIR --tournament FILE``.

The grid is expanded exactly as ``arena tournament`` would (same data keys from ``prepare_data``, same
``expand``), without running anything, and rows are selected by cell key. The cell key is what the
runner itself uses to decide that a cell is finished, so the board and a rerun can never disagree: a
row whose key the grid no longer produces (an edited entry, a new split, changed code in the key) is
stale, counted and left out, never averaged in. Matching on tournament name and labels instead would
need no data, but would keep rows made with other params under a reused label, another split or older
code. Grid cells without a row come back as ``absent`` rows, so their protector shows as incomplete.

Data splits are written to the run's own stage cache when ``DIR/.cache`` exists (they are already there
after a run), else to a temporary directory: showing a leaderboard writes nothing into it. A storage URI
(``s3://...``) always takes the temporary directory: the splits made here from the data set give the
same data keys as the stored ones, without downloading those.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def grid_rows(path: Path | str, tournament: str | Path, rows: list[dict[str, Any]]) -> tuple[list[dict], dict[str, Any]]:
    """(rows of the grid plus one ``absent`` row per missing cell, counts of what was left out); ``path`` is
    the rows' directory or storage URI."""
    from .registry import get_registry
    from .storage import is_uri
    from .tournament.config import load_config
    from .tournament.grid import expand, resolve_precision
    from .tournament.runner import cell_columns, prepare_data
    from .tournament.stagecache import StageCache

    cfg = load_config(tournament)
    own = Path(path) / ".cache" if not is_uri(str(path)) and Path(path).is_dir() else None
    with tempfile.TemporaryDirectory(prefix="arena-board-") as tmp:
        cache = StageCache(own if own is not None and own.is_dir() else Path(tmp))
        data_keys = prepare_data(cfg, cache)
        # the precision a run decides (amp: auto) is part of every cell key, so decide it the same way
        amp = resolve_precision(cfg, {i: cache.data_dir(k) for i, k in data_keys.items()})
        grid = expand(cfg, data_keys, get_registry(), amp=amp)
    inside = [r for r in rows if r.get("cell_key") in grid.cells]
    stale = [r for r in rows if r.get("cell_key") not in grid.cells and r.get("tournament") == cfg.name]
    have = {r["cell_key"] for r in inside}
    absent = [{**cell_columns(c), "tournament": cfg.name, "status": "absent", "error": "no row yet"}
              for k, c in grid.cells.items() if k not in have]
    info = {"tournament": cfg.name, "file": str(tournament), "grid_cells": len(grid.cells), "in_grid": len(inside),
            "absent": len(absent), "stale": len(stale),
            "stale_cells": sorted({_who(r) for r in stale})[:50],
            "other_tournaments": len(rows) - len(inside) - len(stale)}
    return inside + absent, info


def _who(r: dict[str, Any]) -> str:
    p = r.get("protector_label") or r.get("protector")
    e = r.get("exploiter_label") or r.get("exploiter")
    a = r.get("architecture_label") or r.get("architecture")
    return f"{p} x {e} / {a} s{r.get('seed')}"
