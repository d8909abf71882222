"""``arena leaderboard [DIR]``: matrices, worst-case rankings, JSON, and a heatmap PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..params import ArenaError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="show a tournament's results")
    p.add_argument("path", nargs="?", default="leaderboard", help="directory of cell Parquet files (or one file)")
    p.add_argument("--metric", default="clean_acc", choices=("clean_acc", "best_acc", "selected_acc", "robust_acc"),
                   help="clean_acc: after the last epoch; best_acc: best epoch (an oracle stop)")
    p.add_argument("--best", action="store_const", const="best_acc", dest="metric", help="same as --metric best_acc")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a heatmap per matrix to this PNG")
    p.add_argument("--errors", action="store_true", help="list failed and invalid cells with their errors")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..board import matrices, plot_heatmaps, rankings
    from ..leaderboard import read_rows

    path = Path(args.path)
    if not path.exists():
        raise ArenaError(f"{path}: no such leaderboard directory or file (run a tournament first)")
    rows = read_rows(path)
    if not rows:
        raise ArenaError(f"{path}: holds no result rows")
    mats = matrices(rows, args.metric)
    ranks = rankings(rows, args.metric)
    if args.plot:
        plot_heatmaps(mats, Path(args.plot))
    if args.json:
        print(json.dumps({"matrices": mats, "rankings": ranks, "rows": len(rows)}, default=str, indent=2))
        return 0
    con = Console()
    for m in mats:
        con.print(_matrix_table(m, args.metric))
    t = Table(title="protectors by worst case (highest accuracy any exploiter on any architecture recovers; "
                    "lower is better)")
    for c in ("rank", "protector", "worst-case acc %", "strongest exploiter / architecture", "settings"):
        t.add_column(c)
    for i, d in enumerate(ranks["protectors"], 1):
        name = d["protector"] + (" (baseline)" if d.get("baseline") else "")
        t.add_row(str(i), name + (" [red](has invalid cells)[/red]" if d["has_invalid"] else ""),
                  f"{100 * d['worst_case_acc']:.1f}", f"{d['strongest_exploiter']} / {d['strongest_architecture']}",
                  str(d["settings"]))
    con.print(t)
    t = Table(title="exploiters by accuracy recovered on protected data (higher is stronger)")
    for c in ("rank", "exploiter", "mean acc %", "mean gain over 'none' (points)", "cells"):
        t.add_column(c)
    for i, d in enumerate(ranks["exploiters"], 1):
        gain = "" if d["mean_recovered"] is None else f"{100 * d['mean_recovered']:+.1f}"
        t.add_row(str(i), d["exploiter"], f"{100 * d['mean_acc']:.1f}", gain, str(d["cells"]))
    con.print(t)
    bad = [r for r in rows if r["status"] != "ok"]
    if bad and args.errors:
        for r in bad:
            con.print(f"[red]{r['status']}[/red] {r['protector']} x {r['exploiter']} / {r['architecture']} "
                      f"s{r['seed']}: {r['error']}")
    elif bad:
        con.print(f"{len(bad)} cells failed or invalid: see them with --errors")
    if args.plot:
        con.print(f"heatmap written to {args.plot}")
    return 0


def _cell_text(c: dict | None) -> str:
    if c is None:
        return ""
    if c["value"] is None:
        return f"[red]{c['status']}[/red]"
    colour = "green" if c["value"] < 0.4 else ("yellow" if c["value"] < 0.7 else "red")
    return f"[{colour}]{100 * c['value']:.1f}[/{colour}]"


def _matrix_table(m: dict, metric: str) -> Any:
    """Protectors x exploiters, transposed when there are more exploiters than protectors so the wide
    side runs down the page; hyphenated names break across header lines to keep columns narrow."""
    from rich.table import Table

    ratio = f", poison ratio {m['poison_ratio']:g}" if m["poison_ratio"] < 1 else ""
    flip = len(m["exploiters"]) > len(m["protectors"])
    rows, cols = (m["exploiters"], m["protectors"]) if flip else (m["protectors"], m["exploiters"])
    what = "rows: exploiters, columns: protectors" if flip else "rows: protectors, columns: exploiters"
    t = Table(title=f"{m['tournament']}: {m['dataset']} {m['dataset_params']} / {m['architecture']}{ratio} "
                    f"- {metric} % ({what}; low = protection holds)")
    t.add_column("exploiter \\ protector" if flip else "protector \\ exploiter", no_wrap=True)
    for c in cols:
        t.add_column(c.replace("-", "-\n"), justify="right")
    for r in rows:
        t.add_row(r, *[_cell_text(m["cells"].get(c if flip else r, {}).get(r if flip else c)) for c in cols])
    if m["control"] is not None:
        t.caption = f"clean part only (partial-poisoning control): {100 * m['control']:.1f}"
    return t
