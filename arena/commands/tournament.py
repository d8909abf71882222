"""``arena tournament FILE``: validate, expand, run on Ray, leave Parquet rows; rerun to resume."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tournament", help="run a protector x exploiter x architecture grid from a YAML file")
    p.add_argument("file", help="tournament YAML, e.g. tournaments/quick.yaml")
    p.add_argument("--output", default=None, help="output directory (overrides the file's 'output')")
    p.add_argument("--data-root", default=None,
                   help="where data sets without a 'root' in the file live (sets $ARENA_DATA for every worker)")
    p.add_argument("--storage", default=None, metavar="URI",
                   help="where stage outputs, data splits and rows live, reachable from every Ray node: s3://bucket/dir, "
                        "gs://, hdfs://, or a shared mount as file:///path (default: the output directory)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or an embedded instance)")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells whose row is 'failed' or 'invalid'")
    p.add_argument("--dry-run", action="store_true", help="validate and show the stage counts, run nothing")
    p.add_argument("--no-live", action="store_true", help="no live view (logs, CI)")


def run(args: argparse.Namespace) -> int:
    import os

    from rich.console import Console

    from ..tournament.config import load_config
    from ..tournament.grid import expand
    from ..tournament.runner import prepare_data, run_tournament
    from ..tournament.stagecache import StageCache

    console = Console()
    if args.data_root:
        os.environ["ARENA_DATA"] = args.data_root
    cfg = load_config(args.file, output=args.output, storage=args.storage)
    if args.dry_run:
        from ..registry import get_registry

        grid = expand(cfg, prepare_data(cfg, StageCache(cfg.output / ".cache"), store=False), get_registry())
        c, n = grid.counts(), grid.naive_counts()
        console.print(f"{cfg.path}: valid. {c['train']} cells into {cfg.rows_at}; stages {c['protect']} protect, {c['purify']} purify, "
                      f"{c['train']} train (a cell-by-cell runner would do {n['protect']}/{n['purify']}/{n['train']})")
        return 0
    summary = run_tournament(cfg, address=args.address, retry_failed=args.retry_failed, live=not args.no_live,
                             console=console)
    console.print(summary.line())
    if summary.ran:
        console.print(f"see it with: arena leaderboard {summary.output}")
    return 0
