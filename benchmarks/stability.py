"""Does a protector protect on every seed? N seeds per protector x exploiter at a tournament's settings.

A seed varies everything random in a cell: the protector's own randomness (its surrogate's init, batch
order, random starts; the protect stage is keyed by seed), the exploiter's, and the victim's init and
batch order. The victim alone is stable on digits (sd ~1.3 points unprotected), so the spread this script
prints is mostly the protect stage's: a protector whose effect swings by tens of points from seed to seed
has not converged to a method's result, and its single-seed cell says nothing.

It runs the tournament's own grid (same data, recipe, protector params) restricted to the exploiters and
architecture given, with seeds 0..N-1, through the real tournament engine (Ray, stage cache, Parquet rows),
then prints per protector x exploiter: mean, sd, min, max of clean test accuracy, each seed's value, and the
protect diagnostics (weak stages, EMN rounds, the arena's noise separability). With ``--against OLD.yaml``
it runs a second tournament file the same way in the same invocation and prints both side by side, so a
change of settings is judged against the settings before it on the same machine::

    python benchmarks/stability.py tournaments/quick.yaml --against benchmarks/settings/quick-before.yaml
    python benchmarks/stability.py tournaments/quick.yaml --seeds 5 --exploiters none,iss-grayscale
    python benchmarks/stability.py tournaments/quick.yaml --protectors sem --against-set sem.def_steps=3

``--set LABEL.PARAM=VALUE`` / ``recipe.FIELD=VALUE`` (and ``--against-set``) change one setting of a committed
file on the command line, so a variant needs no copied YAML that drifts from the file it varies.

Rows land in ``--output`` (default ``runs/stability-<name>``): a rerun recomputes nothing, and an
interrupted run resumes. ``--json FILE`` writes the summary for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def derive(path: str, seeds: int, exploiters: list[str] | None, arch: str | None, protectors: list[str] | None,
           output: str | None, sets: list[str] | None = None) -> tuple[Any, str]:
    """The tournament at ``path`` with its grid cut to the given exploiters, one architecture and N seeds, and
    the ``--set`` overrides applied."""
    from common import tournament_raw

    from arena.tournament.config import parse_config

    p = Path(path)
    raw = tournament_raw(path, sets or [])
    name = f"stability-{raw.get('name', p.stem)}"
    raw["name"] = name

    def entry_name(e: Any) -> str:
        return e if isinstance(e, str) else e.get("name", "")

    if exploiters:
        keep = [e for e in raw.get("exploiters", ["none"]) if entry_name(e) in exploiters]
        missing = set(exploiters) - {entry_name(e) for e in keep}
        keep += sorted(missing)  # an exploiter the file lacks runs with its defaults
        raw["exploiters"] = keep
    if protectors:
        raw["protectors"] = [e for e in raw["protectors"] if entry_name(e) in protectors]
    archs = raw.get("architectures", ["resnet18"])
    chosen = next((a for a in archs if entry_name(a) == arch), None) if arch else archs[0]
    if chosen is None:
        chosen = arch
    if isinstance(chosen, dict):
        chosen = {k: v for k, v in chosen.items() if k not in ("protectors", "exploiters")}
    raw["architectures"] = [chosen]
    raw["seeds"] = list(range(seeds))
    raw["output"] = output or str(ROOT / "runs" / name)
    return parse_config(raw, p), name


def summarize(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["train_subset"] == "clean-only":
            continue
        key = (r.get("protector_label") or r["protector"], r.get("exploiter_label") or r["exploiter"])
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        ok = [r for r in rs if r["status"] == "ok"]
        acc = [100 * (r["selected_acc"] if r["selected_acc"] is not None else r["clean_acc"]) for r in ok]
        infos = [json.loads(r["protect_info"]) for r in ok if r.get("protect_info")]
        sep = [r["noise_separability"] for r in ok if r.get("noise_separability") is not None]
        out[key] = {
            "n": len(acc), "failed": len(rs) - len(ok), "per_seed": [round(a, 1) for a in acc],
            "mean": statistics.fmean(acc) if acc else None,
            "sd": statistics.stdev(acc) if len(acc) > 1 else None,
            "min": min(acc) if acc else None, "max": max(acc) if acc else None,
            "weak": sum(1 for r in ok if r.get("weak")),
            "rounds": [i["rounds"] for i in infos if "rounds" in i],
            "separability": statistics.fmean(sep) if sep else None,
        }
    return out


def run(cfg: Any) -> dict[tuple[str, str], dict[str, Any]]:
    from rich.console import Console

    from arena.leaderboard import read_rows
    from arena.tournament.runner import run_tournament

    summary = run_tournament(cfg, live=sys.stderr.isatty(), console=Console(stderr=True))
    print(summary.line(), file=sys.stderr)
    return summarize(read_rows(cfg.output))


def _fmt(s: dict[str, Any] | None) -> list[str]:
    if s is None or s["mean"] is None:
        return ["-"] * 6
    sd = "-" if s["sd"] is None else f"{s['sd']:.1f}"
    sep = "-" if s["separability"] is None else f"{s['separability']:.2f}"
    diag = f"weak {s['weak']}/{s['n']}" + (f", rounds {s['rounds']}" if s["rounds"] else "")
    return [f"{s['mean']:.1f}", sd, f"{s['min']:.1f}-{s['max']:.1f}", " ".join(f"{a:.0f}" for a in s["per_seed"]),
            sep, diag]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tournament", help="tournament YAML whose settings are measured")
    ap.add_argument("--against", default=None, help="a second tournament YAML (e.g. the settings before a change)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--exploiters", default="none", help="comma-separated exploiter names (default: none)")
    ap.add_argument("--protectors", default=None, help="comma-separated protector names (default: all in the file)")
    ap.add_argument("--arch", default=None, help="architecture (default: the file's first)")
    ap.add_argument("--output", default=None, help="rows directory (default runs/stability-<name>)")
    ap.add_argument("--json", default=None, help="write the summary here")
    ap.add_argument("--set", action="append", default=[], metavar="LABEL.PARAM=VALUE",
                    help="override a protector param (or recipe.FIELD) of the first file; repeatable")
    ap.add_argument("--against-set", action="append", default=[], metavar="LABEL.PARAM=VALUE",
                    help="the same for --against (which defaults to the first file when only this is given)")
    a = ap.parse_args(argv)
    if a.against_set and not a.against:
        a.against = a.tournament
    from rich.console import Console
    from rich.table import Table

    expl = [e for e in a.exploiters.split(",") if e]
    prot = [p for p in a.protectors.split(",") if p] if a.protectors else None
    runs = {}
    for label, path in (("now", a.tournament), ("against", a.against)):
        if path is None:
            continue
        out = a.output if label == "now" else None
        sets = a.set if label == "now" else a.against_set
        cfg, name = derive(path, a.seeds, expl, a.arch, prot, out if label == "now" else None, sets)
        if label == "against" and a.against_set:  # a variant of the same file: its own rows directory
            name = f"{name}-variant"
            cfg = derive(path, a.seeds, expl, a.arch, prot, str(ROOT / "runs" / name), sets)[0]
        runs[label] = {"file": path, "name": name, "cells": run(cfg)}
    import torch

    from arena.precision import cpu_name

    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    t = Table(title=f"clean test accuracy % over {a.seeds} seeds (exploiter per row; low = protected); {machine}")
    t.add_column("protector")
    t.add_column("exploiter")
    for label in runs:
        for c in ("mean", "sd", "min-max", "per seed", "sep", "diagnostics"):
            t.add_column(f"{c}\n({Path(runs[label]['file']).name})" if len(runs) > 1 else c,
                         justify="right" if c in ("mean", "sd") else "left")
    keys = list(dict.fromkeys(k for r in runs.values() for k in r["cells"]))
    for k in keys:
        t.add_row(k[0], k[1], *[x for r in runs.values() for x in _fmt(r["cells"].get(k))])
    Console(width=250).print(t)
    if a.json:
        blob = {label: {"file": r["file"], "cells": {f"{p} x {e}": v for (p, e), v in r["cells"].items()}}
                for label, r in runs.items()}
        blob["machine"] = machine
        Path(a.json).write_text(json.dumps(blob, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
