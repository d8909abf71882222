"""``arena leaderboard [DIR]``: matrices, worst-case rankings per threat model, JSON, and a heatmap PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..params import ArenaError

METRICS = ("clean_acc", "best_acc", "selected_acc", "robust_acc")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="show a tournament's results")
    p.add_argument("path", nargs="?", default="leaderboard",
                   help="directory of cell Parquet files (or one file), or a storage URI (s3://bucket/dir, gs://, hdfs://)")
    p.add_argument("--metric", default="clean_acc", choices=METRICS,
                   help="clean_acc: after the last epoch (or the early-stopped epoch); best_acc: best epoch (an "
                        "oracle stop); selected_acc: early-stopped only; robust_acc: adversarial accuracy "
                        "(cells without the metric show n/a)")
    p.add_argument("--best", action="store_const", const="best_acc", dest="metric", help="same as --metric best_acc")
    p.add_argument("--tournament", default=None, metavar="YAML",
                   help="show only the rows this tournament's current grid produces; other rows are counted as stale")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a heatmap per matrix to this PNG")
    p.add_argument("--errors", action="store_true", help="list failed and invalid cells with their errors")
    p.add_argument("--diagnostics", action="store_true",
                   help="list cells whose protection is weak (stopped short of its own criterion) with its diagnostics")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..board import matrices, noise_summary, plot_heatmaps, rankings
    from ..leaderboard import read_rows
    from ..storage import is_uri

    path: Any = args.path if is_uri(args.path) else Path(args.path)
    if isinstance(path, Path) and not path.exists():
        raise ArenaError(f"{path}: no such leaderboard directory or file (run a tournament first)")
    try:
        rows = read_rows(path)
    except OSError as e:  # an unreachable bucket, missing credentials: pyarrow's message, on one line
        raise ArenaError(f"{path}: cannot read the rows ({' '.join(str(e).split())[:200]})") from None
    stale: dict[str, Any] | None = None
    if args.tournament:
        from ..gridrows import grid_rows

        rows, stale = grid_rows(path, args.tournament, rows)
    if not rows:
        raise ArenaError(f"{path}: holds no result rows" + (f" of {args.tournament}" if args.tournament else ""))
    mats = matrices(rows, args.metric)
    ranks = rankings(rows, args.metric)
    weak = [r for r in rows if r.get("weak")]
    if args.plot:
        plot_heatmaps(mats, Path(args.plot))
    if args.json:
        out: dict[str, Any] = {"matrices": mats, "rankings": ranks, "rows": len(rows)}
        if stale is not None:
            out["stale"] = stale
        if args.diagnostics:
            out["weak"] = [_weak_entry(r) for r in weak]
            out["noise"] = noise_summary(rows)
        print(json.dumps(out, default=str, indent=2))
        return 0
    con = Console()
    for m in mats:
        con.print(_matrix_table(m, args.metric))
    for t in ranks["tables"]:
        con.print(_protector_table(t, args.metric))
    if ranks["unranked"]:
        con.print("not ranked (no ok cell with " + args.metric + "): " + ", ".join(
            f"{d['protector']} ({d['tournament']}, {len(d['missing'])} cells failed or absent)" for d in ranks["unranked"]))
    _print_exploiters(con, ranks["exploiters"])
    bad = [r for r in rows if r["status"] != "ok"]
    if bad and args.errors:
        for r in bad:
            con.print(f"[red]{r['status']}[/red] {_who(r)}: {r['error']}")
    elif bad:
        con.print(f"{len(bad)} cells failed, invalid or absent: see them with --errors")
    if args.diagnostics:
        con.print(_noise_table(noise_summary(rows)))
        con.print(f"{len(weak)} cells with weak protection" + (":" if weak else ""))
        for r in weak:
            con.print(f"[yellow]weak[/yellow] {_who(r)}: {r.get('protect_info') or '(no diagnostics recorded)'}")
    elif weak:
        con.print(f"{len(weak)} cells with weak protection (w): see them with --diagnostics")
    odd = [f"{d['protector']} x {c}" for d in ranks["protectors"] for c in d.get("suspicious") or []]
    if odd:
        con.print(f"[red]{len(dict.fromkeys(odd))} suspicious cells[/red] (?: above every unprotected cell of their "
                  "setting by > 5 points; left out of the rankings): " + "; ".join(dict.fromkeys(odd)))
    if stale is not None:
        con.print(f"{args.tournament}: {stale['in_grid']} rows of the current grid shown, {stale['absent']} grid cells "
                  f"have no row yet; [yellow]{stale['stale']} stale rows[/yellow] in {path} (not produced by the "
                  f"current grid) left out" + (": " + "; ".join(stale["stale_cells"][:5]) if stale["stale"] else "")
                  + ("; ..." if stale["stale"] > 5 else ""))
    if args.plot:
        con.print(f"heatmap written to {args.plot}")
    return 0


def _who(r: dict[str, Any]) -> str:
    p = r.get("protector_label") or r["protector"]
    e = r.get("exploiter_label") or r["exploiter"]
    a = r.get("architecture_label") or r["architecture"]
    return f"{r['tournament']}: {p} x {e} / {a} s{r['seed']}"


def _weak_entry(r: dict[str, Any]) -> dict[str, Any]:
    info = r.get("protect_info")
    try:
        info = json.loads(info) if info else None
    except ValueError:
        pass
    return {"tournament": r["tournament"], "protector": r.get("protector_label") or r["protector"],
            "exploiter": r.get("exploiter_label") or r["exploiter"],
            "architecture": r.get("architecture_label") or r["architecture"], "seed": r["seed"], "protect_info": info}


def _noise_table(summary: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="the noise, measured by the arena (mean over seeds)")
    for c in ("setting", "protector", "seeds", "separability", "class share", "weak cells"):
        t.add_column(c, justify="left" if c in ("setting", "protector") else "right")
    for d in summary:
        t.add_row(f"{d['tournament']}: {d['dataset']}", d["protector"], str(d["seeds"]),
                  "-" if d["separability"] is None else f"{d['separability']:.2f}",
                  "-" if d["class_share"] is None else f"{d['class_share']:.2f}",
                  f"{d['weak_cells']}/{d['cells']}")
    return t


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _cell_text(c: dict | None) -> str:
    from ..board import cell_text

    if c is None:
        return ""
    txt = cell_text(c)
    if c["value"] is None:
        return f"[red]{txt}[/red]" if c["status"] != "ok" else f"[dim]{txt}[/dim]"
    colour = "green" if c["value"] < 0.4 else ("yellow" if c["value"] < 0.7 else "red")
    return f"[{colour}]{txt}[/{colour}]"


def _matrix_table(m: dict, metric: str) -> Any:
    """Protectors x exploiters, transposed when there are more exploiters than protectors so the wide
    side runs down the page; hyphenated names break across header lines to keep columns narrow."""
    from rich.table import Table

    from ..board import setting_name

    flip = len(m["exploiters"]) > len(m["protectors"])
    rows, cols = (m["exploiters"], m["protectors"]) if flip else (m["protectors"], m["exploiters"])
    what = "rows: exploiters, columns: protectors" if flip else "rows: protectors, columns: exploiters"
    t = Table(title=f"{setting_name(m)} / {m['architecture']} - {metric} % ({what}; low = protection holds)")
    t.add_column("exploiter \\ protector" if flip else "protector \\ exploiter", no_wrap=True)
    for c in cols:
        t.add_column(c.replace("-", "-\n"), justify="right")
    for r in rows:
        t.add_row(r, *[_cell_text(m["cells"].get(c if flip else r, {}).get(r if flip else c)) for c in cols])
    notes = []
    cells = [c for d in m["cells"].values() for c in d.values()]
    if any(c.get("ci_high") is not None for c in cells):
        notes.append("mean ± half-width of the 95 % t interval over seeds")
    if any(c.get("weak") for c in cells):
        notes.append("w: weak protection (--diagnostics)")
    if any(c.get("failed") and c["value"] is not None for c in cells):
        notes.append("!: some seeds failed (--errors)")
    if m["control"] is not None:
        notes.append(f"clean part only (partial-poisoning control): {100 * m['control']:.1f}")
    t.caption = "; ".join(notes) or None
    return t


def _protector_table(tab: dict[str, Any], metric: str) -> Any:
    from rich.table import Table

    from ..board import setting_name

    apart = " - unbounded: no budget, not comparable with bounded protectors" if tab["unbounded"] else ""
    t = Table(title=f"{setting_name(tab)} - protectors under threat model {tab['threat_model']}{apart}, by worst "
                    f"case ({metric}: the highest any exploiter on any architecture recovers; lower is better; "
                    f"overlapping intervals share a rank)")
    for c in ("rank", "protector", "worst case %", "strongest exploiter / arch", "complete"):
        t.add_column(c)
    for d in tab["protectors"]:
        name = d["protector"] + (" (baseline)" if d["baseline"] else "")
        if d["has_invalid"]:
            name += " [red](has invalid cells)[/red]"
        ci = "" if d["ci_low"] is None else f" ± {100 * d['half_width']:.1f} (n={d['n']})"
        miss = d["missing"]
        done = "yes" if d["complete"] else (f"[red]no[/red]: {len(miss)} missing (" + ", ".join(miss[:3])
                                             + (", ..." if len(miss) > 3 else "") + ")")
        t.add_row(d["rank_shown"], name, _pct(d["worst_case_acc"]) + ci,
                  f"{d['strongest_exploiter']} / {d['strongest_architecture']}", done)
    return t


def _print_exploiters(con: Any, exploiters: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from ..board import setting_name

    groups: dict[str, list[dict]] = {}
    for d in exploiters:
        groups.setdefault(setting_name(d), []).append(d)
    for name, ds in groups.items():
        t = Table(title=f"{name} - exploiters by accuracy recovered on protected data (higher is stronger); gain over "
                        f"'none' paired by protector, architecture and seed")
        for c in ("rank", "exploiter", "mean acc %", "gain over 'none' (points)", "gain 95 % interval", "pairs"):
            t.add_column(c)
        for d in ds:
            gain = "" if d["mean_recovered"] is None else f"{100 * d['mean_recovered']:+.1f}"
            ci = "" if d["gain_ci_low"] is None else f"{100 * d['gain_ci_low']:+.1f} - {100 * d['gain_ci_high']:+.1f}"
            t.add_row(str(d["rank"]), d["exploiter"], _pct(d["mean_acc"]), gain, ci, str(d["pairs"]))
        con.print(t)
