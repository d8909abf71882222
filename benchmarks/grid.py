"""How much work the DAG saves, and what a tournament costs end to end.

Counts the protect / purify / train stages a tournament runs (every stage once under its content key)
against the naive count of a cell-by-cell runner that recomputes protection and purification for every
cell, then (unless ``--count-only``) times the tournament end to end in a fresh output directory with
the real CLI, and times the rerun that must find everything finished.

    python benchmarks/grid.py                                    # tournaments/quick.yaml, counts + timed run
    python benchmarks/grid.py tournaments/full.yaml --count-only --data-root /data

The last line is the stage ratio naive / DAG.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arena.registry import get_registry
from arena.tournament.config import load_config
from arena.tournament.grid import expand
from arena.tournament.runner import prepare_data
from arena.tournament.stagecache import StageCache

ROOT = Path(__file__).resolve().parents[1]


def price(rows_dir: str) -> None:
    """Stage seconds as recorded in the rows: the DAG pays each protect/purify once, a naive runner per cell."""
    from arena.leaderboard import read_rows

    rows = [r for r in read_rows(rows_dir) if r["status"] == "ok"]
    # one protect stage per protector entry and seed, one purify per protected set and exploiter entry
    protect = {(r["protector"], r["protector_params"], r["seed"]): r["protect_s"] or 0.0 for r in rows}
    purify = {(r["protector"], r["protector_params"], r["exploiter"], r["exploiter_params"], r["seed"]):
              r["purify_s"] or 0.0 for r in rows}
    train = sum(r["train_s"] or 0.0 for r in rows)
    dag_s = sum(protect.values()) + sum(purify.values()) + train
    naive_s = sum((r["protect_s"] or 0.0) + (r["purify_s"] or 0.0) + (r["train_s"] or 0.0) for r in rows)
    print(f"stage seconds recorded in {rows_dir} ({len(rows)} ok rows): DAG {dag_s:.0f} s "
          f"(protect {sum(protect.values()):.0f}, purify {sum(purify.values()):.0f}, train {train:.0f}); "
          f"naive {naive_s:.0f} s; naive/DAG {naive_s / max(dag_s, 1e-9):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default=str(ROOT / "tournaments" / "quick.yaml"))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--count-only", action="store_true", help="only count stages; run nothing")
    ap.add_argument("--output", default=None, help="output directory of the timed run (default: a fresh temp dir)")
    ap.add_argument("--rows", default=None, metavar="DIR",
                    help="with --count-only: also price the stages with the seconds recorded in this leaderboard")
    args = ap.parse_args()
    if args.data_root:
        os.environ["ARENA_DATA"] = args.data_root
    print(f"# {dt.date.today()} {platform.node()} {os.cpu_count()} CPUs; {args.file}", flush=True)
    out = Path(args.output or tempfile.mkdtemp(prefix="arena-grid-"))
    cfg = load_config(args.file, output=str(out))
    with tempfile.TemporaryDirectory() as tmp:
        grid = expand(cfg, prepare_data(cfg, StageCache(Path(tmp))), get_registry())
    dag, naive = grid.counts(), grid.naive_counts()
    for k in ("protect", "purify", "train"):
        print(f"{k:8s} stages: DAG {dag[k]:5d}   naive {naive[k]:5d}")
    if not args.count_only:
        cmd = [sys.executable, "-m", "arena.cli", "tournament", args.file, "--output", str(out), "--no-live"]
        for label in ("first run", "rerun"):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT)
            print(f"{label}: {time.perf_counter() - t0:.1f} s wall (output {out})", flush=True)
    rows_dir = args.rows if args.count_only else str(out)
    if rows_dir:
        price(rows_dir)
    print(f"stages naive/DAG: {sum(naive.values()) / sum(dag.values()):.2f}x "
          f"({sum(naive.values())} vs {sum(dag.values())})")


if __name__ == "__main__":
    main()
