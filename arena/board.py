"""Leaderboard views: the protector x exploiter matrix and the worst-case rankings.

A protector's score is its worst case, the highest clean accuracy any exploiter on any victim
architecture recovers (the attacker chooses both); an exploiter's score is the accuracy it recovers,
averaged over protectors. Only ``ok`` rows are ranked; invalid rows (budget broken) never are.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

CONTROL = "clean-only"


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _none_first(names: Any) -> list[str]:
    """The baseline row and column ('none') first, the rest in their given order."""
    names = list(names)
    return sorted(names, key=lambda n: n != "none")


def value(r: dict[str, Any], metric: str) -> Any:
    """A cell's number. For ``clean_acc`` that is the accuracy of the model the attacker keeps: the
    best-validation epoch's (``selected_acc``) when an exploiter selected one (early stopping)."""
    if metric == "clean_acc" and r.get("selected_acc") is not None:
        return r["selected_acc"]
    return r[metric]


def group_key(r: dict[str, Any]) -> tuple:
    return (r["tournament"], r["dataset"], r["dataset_params"], r["architecture"], r["poison_ratio"])


def matrices(rows: list[dict[str, Any]], metric: str = "clean_acc") -> list[dict[str, Any]]:
    """One matrix per (tournament, dataset, architecture, poison ratio); cells average over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["train_subset"] != CONTROL:
            groups[group_key(r)].append(r)
    # Partial-poisoning controls (clean part only), averaged over seeds, per setting.
    ctrl_vals: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r["train_subset"] == CONTROL and r["status"] == "ok":
            ctrl_vals[group_key(r)].append(r[metric])
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        prot = _none_first(dict.fromkeys(r["protector"] for r in rs))
        expl = _none_first(dict.fromkeys(r["exploiter"] for r in rs))
        cells: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for p in prot:
            for e in expl:
                sel = [r for r in rs if r["protector"] == p and r["exploiter"] == e]
                if not sel:
                    continue
                ok = [r for r in sel if r["status"] == "ok"]
                statuses = sorted({r["status"] for r in sel})
                cells[p][e] = {"value": _mean([value(r, metric) for r in ok]), "n": len(ok),
                               "status": "ok" if ok else statuses[0],
                               "error": next((r["error"] for r in sel if r["error"]), None),
                               "seeds": len(sel)}
        out.append({"tournament": key[0], "dataset": key[1], "dataset_params": key[2], "architecture": key[3],
                    "poison_ratio": key[4], "protectors": prot, "exploiters": expl, "cells": cells,
                    "control": _mean(ctrl_vals.get(key, [])), "metric": metric})
    return out


def setting_key(r: dict[str, Any]) -> tuple:
    """What a protector is ranked within: one data set and poison ratio; the architecture is the attacker's pick."""
    return (r["tournament"], r["dataset"], r["dataset_params"], r["poison_ratio"])


def rankings(rows: list[dict[str, Any]], metric: str = "clean_acc") -> dict[str, list[dict[str, Any]]]:
    """Worst-case protector ranking and exploiter recovery ranking over all full-poisoning ok rows.

    A protector's worst case in a setting is the highest seed-mean accuracy over every (exploiter,
    architecture) cell it has there: the attacker chooses both, so a protector tried on more victims can
    only look worse, never better. Its score is the mean of that over settings (data sets). An exploiter's
    score is its mean accuracy over (protector, architecture) cells with a real protector, and its gain the
    mean difference to ``none`` on the same protector and architecture.
    """
    ok = [r for r in rows if r["status"] == "ok" and r["train_subset"] != CONTROL and r["poison_ratio"] >= 1.0]
    by_setting: dict[tuple, dict[tuple[str, str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in ok:
        by_setting[setting_key(r)][(r["protector"], r["exploiter"], r["architecture"])].append(value(r, metric))
    prot_worst: dict[str, list[float]] = defaultdict(list)
    prot_which: dict[str, list[str]] = defaultdict(list)
    expl_gain: dict[str, list[float]] = defaultdict(list)
    expl_acc: dict[str, list[float]] = defaultdict(list)
    invalid = {r["protector"] for r in rows if r["status"] == "invalid"}
    for cells in by_setting.values():
        means = {pea: statistics.fmean(v) for pea, v in cells.items()}
        for p in {p for p, _, _ in means}:
            mine = {(e, a): v for (pp, e, a), v in means.items() if pp == p}
            worst = max(mine, key=mine.get)
            prot_worst[p].append(mine[worst])
            prot_which[p].append(worst)
            if p == "none":
                continue
            for (e, a), v in mine.items():
                expl_acc[e].append(v)
                base = mine.get(("none", a))
                if base is not None:
                    expl_gain[e].append(v - base)
    protectors = []
    for p, v in prot_worst.items():
        exploiter, arch = max(set(prot_which[p]), key=prot_which[p].count)  # the most frequent worst case
        protectors.append({"protector": p, "worst_case_acc": statistics.fmean(v), "strongest_exploiter": exploiter,
                           "strongest_architecture": arch, "settings": len(v), "has_invalid": p in invalid,
                           "baseline": p == "none"})
    protectors.sort(key=lambda d: d["worst_case_acc"])
    exploiters = [{"exploiter": e, "mean_acc": statistics.fmean(v), "mean_recovered": _mean(expl_gain.get(e, [])),
                   "cells": len(v)} for e, v in expl_acc.items()]
    exploiters.sort(key=lambda d: -(d["mean_acc"]))
    return {"protectors": protectors, "exploiters": exploiters}


def plot_heatmaps(mats: list[dict[str, Any]], path: Path) -> Path:
    """One heatmap per matrix, written as a PNG: the matrix is what people want to see first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(mats)
    if n == 0:
        raise ValueError("no rows to plot")
    fig_w = max(6.0, 0.9 * max(len(m["exploiters"]) for m in mats) + 3)
    fig_h = sum(0.6 * len(m["protectors"]) + 2.2 for m in mats)
    ratios = [len(m["protectors"]) + 3 for m in mats]  # square cells: a small matrix stays small
    fig, axes = plt.subplots(n, 1, figsize=(fig_w, fig_h), squeeze=False, gridspec_kw={"height_ratios": ratios})
    for ax, m in zip(axes[:, 0], mats):
        grid = np.full((len(m["protectors"]), len(m["exploiters"])), np.nan)
        for i, p in enumerate(m["protectors"]):
            for j, e in enumerate(m["exploiters"]):
                c = m["cells"].get(p, {}).get(e)
                if c and c["value"] is not None:
                    grid[i, j] = 100 * c["value"]
        # Colour runs from 0 to the matrix's best cell, so a hard data set (clean 50 %) is not all green.
        top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 100.0
        im = ax.imshow(grid, vmin=0, vmax=max(top, 10.0), cmap="RdYlGn_r", aspect="equal")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                c = m["cells"].get(m["protectors"][i], {}).get(m["exploiters"][j])
                txt = "" if c is None else (f"{grid[i, j]:.0f}" if not np.isnan(grid[i, j]) else c["status"][:4])
                ax.text(j, i, txt, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(m["exploiters"])), m["exploiters"], rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(m["protectors"])), m["protectors"], fontsize=8)
        ratio = f", poison ratio {m['poison_ratio']:g}" if m["poison_ratio"] < 1 else ""
        ax.set_title(f"{m['tournament']}: {m['dataset']} / {m['architecture']}{ratio} - clean test accuracy % "
                     f"({m['metric']}; low = protection holds)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
