"""``arena compare A B``: two leaderboards cell by cell (two machines, two code versions)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..params import ArenaError
from .leaderboard import METRICS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare two leaderboard directories cell by cell")
    p.add_argument("a", help="leaderboard directory (or one Parquet file): run A")
    p.add_argument("b", help="leaderboard directory (or one Parquet file): run B")
    p.add_argument("--metric", default="clean_acc", choices=METRICS)
    p.add_argument("--all", action="store_true", help="list every matched cell, not only the changed ones")
    p.add_argument("--json", action="store_true")


def _rows(path: str) -> list[dict[str, Any]]:
    from ..leaderboard import read_rows

    p = Path(path)
    if not p.exists():
        raise ArenaError(f"{p}: no such leaderboard directory or file")
    rows = read_rows(p)
    if not rows:
        raise ArenaError(f"{p}: holds no result rows")
    return rows


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..compare import compare_runs

    res = compare_runs(_rows(args.a), _rows(args.b), args.metric)
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, **res}, default=str, indent=2))
        return 0
    con = Console()
    shown = res["cells"] if args.all else [c for c in res["cells"] if c["changed"]]
    if shown:
        t = Table(title=f"{args.metric} %: A = {args.a}, B = {args.b} (mean over seeds; * = each mean outside the "
                        f"other's 95 % interval)")
        for c in ("cell", "A", "B", "A - B", ""):
            t.add_column(c, justify="left" if c == "cell" else "right")
        for c in shown:
            def v(x: float | None, st: str) -> str:
                return f"{100 * x:.1f}" if x is not None else st

            flag = {True: "*", False: "", None: "n=1" if c["diff"] else ""}[c["outside_both_intervals"]]
            t.add_row(c["cell"], v(c["a"], c["a_status"]), v(c["b"], c["b_status"]),
                      "" if c["diff"] is None else f"{100 * c['diff']:+.1f}", flag)
        con.print(t)
    for side in ("a", "b"):
        only = res[f"only_in_{side}"]
        if only:
            con.print(f"{len(only)} cells only in {side.upper()} ({getattr(args, side)}): " + "; ".join(only[:10])
                      + ("; ..." if len(only) > 10 else ""))
    for m in res["rankings_changed"]:
        fmt = lambda xs: ", ".join(f"{r} {p}" for p, r in xs) if xs else "(absent)"  # noqa: E731
        con.print(f"ranking changed in {m['table']}:\n  A: {fmt(m['a'])}\n  B: {fmt(m['b'])}")
    if res["no_change"]:
        con.print(f"no change: {res['matched']} cells match exactly, same protector rankings")
    else:
        con.print(f"{res['matched']} cells matched, {res['changed']} differ ({res['outside_both_intervals']} beyond "
                  f"both intervals); {len(res['only_in_a'])} only in A, {len(res['only_in_b'])} only in B; "
                  f"{len(res['rankings_changed'])} rankings changed")
    return 0
