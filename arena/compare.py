"""Two leaderboards side by side: how a maintainer checks that a machine or a code change moved no result.

Cells are matched on everything that defines them except the machine: tournament, data set and params,
protector / exploiter / architecture label and params (the recipe is the architecture's params), poison
ratio and train subset; seeds are averaged. A difference counts as beyond noise only when each run's
mean lies outside the other run's 95 % interval; with one seed there is no interval and that is null.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .board import cell_stats, normalize, rankings

KEY = ("tournament", "dataset", "dataset_params", "protector_label", "protector_params", "exploiter_label",
       "exploiter_params", "architecture_label", "recipe", "poison_ratio", "train_subset")


def _cells(rows: list[dict[str, Any]], metric: str) -> dict[tuple, dict[str, Any]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in normalize(rows):
        groups[tuple(r.get(k) for k in KEY)].append(r)
    return {k: cell_stats(v, metric) for k, v in groups.items()}


def cell_name(key: tuple) -> str:
    d = dict(zip(KEY, key))
    ratio = f" r={d['poison_ratio']:g}" if (d["poison_ratio"] or 1) < 1 else ""
    sub = " (clean part only)" if d["train_subset"] == "clean-only" else ""
    return (f"{d['tournament']}: {d['dataset']} {d['dataset_params'] or ''}: {d['protector_label']} x "
            f"{d['exploiter_label']} / {d['architecture_label']}{ratio}{sub}")


def _inside(x: float, c: dict[str, Any]) -> bool:
    return c["ci_low"] <= x <= c["ci_high"]


def _rank_orders(rows: list[dict[str, Any]], metric: str) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for t in rankings(rows, metric)["tables"]:
        name = f"{t['tournament']}: {t['dataset']} {t['dataset_params'] or ''} r={t['poison_ratio']:g} " \
               f"[{t['threat_model']}]"
        out[name] = [(d["protector"], d["rank_shown"]) for d in t["protectors"]]
    return out


def compare_runs(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], metric: str = "clean_acc") -> dict[str, Any]:
    """Matched cells with their difference (A - B), cells only in one run, and protector rankings that moved."""
    ca, cb = _cells(rows_a, metric), _cells(rows_b, metric)
    cells = []
    for k in sorted(set(ca) & set(cb), key=lambda k: tuple(str(x) for x in k)):
        a, b = ca[k], cb[k]
        diff = None if a["value"] is None or b["value"] is None else a["value"] - b["value"]
        outside = None
        if diff is not None and a["ci_low"] is not None and b["ci_low"] is not None:
            outside = not _inside(b["value"], a) and not _inside(a["value"], b)
        changed = a["status"] != b["status"] or (a["value"] is None) != (b["value"] is None) or \
            (diff is not None and abs(diff) > 1e-12)
        cells.append({"cell": cell_name(k), "a": a["value"], "b": b["value"], "diff": diff,
                      "a_ci": [a["ci_low"], a["ci_high"]], "b_ci": [b["ci_low"], b["ci_high"]],
                      "a_n": a["n"], "b_n": b["n"], "a_status": a["status"], "b_status": b["status"],
                      "outside_both_intervals": outside, "changed": changed})
    ra, rb = _rank_orders(rows_a, metric), _rank_orders(rows_b, metric)
    moved = [{"table": t, "a": ra.get(t), "b": rb.get(t)} for t in sorted(set(ra) | set(rb)) if ra.get(t) != rb.get(t)]
    only_a = sorted(cell_name(k) for k in set(ca) - set(cb))
    only_b = sorted(cell_name(k) for k in set(cb) - set(ca))
    changed = [c for c in cells if c["changed"]]
    return {"metric": metric, "matched": len(cells), "changed": len(changed),
            "outside_both_intervals": sum(1 for c in cells if c["outside_both_intervals"]),
            "cells": cells, "only_in_a": only_a, "only_in_b": only_b, "rankings_changed": moved,
            "no_change": not changed and not only_a and not only_b and not moved}
