"""Leaderboard views: the protector x exploiter matrix and the worst-case rankings.

Rows are grouped by entry label (see :mod:`arena.labels`) and by the whole setting (tournament, data
set and its params, train size, poison ratio; matrices also by architecture label and recipe), so runs
that are not comparable never share a cell. A cell reports the mean over seeds with a 95 % Student-t
interval (:mod:`arena.stats`).

A protector's score is its worst case in a setting: the highest seed-mean accuracy any exploiter on any
victim architecture recovers (the attacker chooses both); the worst cell's interval is its interval and
protectors whose intervals overlap share a rank. Protectors are ranked within their declared threat
model (L-inf 8/255 against L-inf 8/255, unbounded ones apart), and one with a failed, invalid or absent
cell is incomplete: its worst case may be missing the very exploiter that breaks it, so it is listed
after the complete ones, unranked, with the missing cells named. An exploiter's gain over ``none`` is a
paired difference (same protector, architecture and seed), reported with its interval.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .labels import distinguishing_labels
from .stats import Summary, summarize

CONTROL = "clean-only"
BASELINE = "none"
KINDS = (("protector", "protector_params"), ("exploiter", "exploiter_params"), ("architecture", "recipe"))


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _none_first(names: Any) -> list[str]:
    """The baseline row and column ('none') first, the rest in their given order."""
    names = list(names)
    return sorted(names, key=lambda n: n != BASELINE)


def value(r: dict[str, Any], metric: str) -> float | None:
    """A cell's number, None when the row lacks the metric. For ``clean_acc`` that is the accuracy of the
    model the attacker keeps: the best-validation epoch's (``selected_acc``) when an exploiter selected one."""
    if metric == "clean_acc" and r.get("selected_acc") is not None:
        return r["selected_acc"]
    v = r.get(metric)
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _params(kind: str, text: str | None) -> Any:
    try:
        p = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return text
    if kind == "exploiter" and isinstance(p, list):  # a composition: part params by part name
        p = {d.get("name"): d.get("params") for d in p if isinstance(d, dict)}
    return p


def normalize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the rows with every ``*_label`` filled and ``train_images`` set on failed rows.

    Rows written before labels existed get the label the config would have given (the bare name unless
    two entries of one tournament share it); rows whose label is shared by entries with other params (an
    edited YAML) get the distinguishing params appended, so different entries never merge. A failed row
    has no ``train_images``: it takes its setting's, or it would sit in a matrix of its own.
    """
    rows = [dict(r) for r in rows]
    for kind, pcol in KINDS:
        lcol = f"{kind}_label"
        per_t: dict[Any, dict[tuple[str, str], list[dict]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            name = r.get(lcol) or r.get(kind) or "?"
            per_t[r.get("tournament")][(name, json.dumps(_params(kind, r.get(pcol)), sort_keys=True))].append(r)
        for idents in per_t.values():
            keys = list(idents)
            labels = distinguishing_labels([n for n, _ in keys], [json.loads(p) for _, p in keys])
            for k, lab in zip(keys, labels):
                for r in idents[k]:
                    r[lcol] = lab
    sizes: dict[tuple, Counter] = defaultdict(Counter)
    for r in rows:
        if r.get("train_images") is not None and r.get("train_subset") != CONTROL:
            sizes[base_key(r)][r["train_images"]] += 1
    for r in rows:
        if r.get("train_images") is None and r.get("train_subset") != CONTROL and sizes.get(base_key(r)):
            r["train_images"] = sizes[base_key(r)].most_common(1)[0][0]
    return rows


def base_key(r: dict[str, Any]) -> tuple:
    return (r.get("tournament"), r.get("dataset"), r.get("dataset_params"), r.get("poison_ratio"))


def setting_key(r: dict[str, Any]) -> tuple:
    """What a protector is ranked within: one tournament, data set and size, poison ratio."""
    return (*base_key(r), r.get("train_images"))


SETTING_FIELDS = ("tournament", "dataset", "dataset_params", "poison_ratio", "train_images")


def _setting_dict(key: tuple) -> dict[str, Any]:
    return dict(zip(SETTING_FIELDS, key))


def setting_name(s: dict[str, Any]) -> str:
    ratio = f", poison ratio {s['poison_ratio']:g}" if (s.get("poison_ratio") or 1) < 1 else ""
    size = f", {s['train_images']} train images" if s.get("train_images") else ""
    return f"{s['tournament']}: {s['dataset']} {s['dataset_params'] or ''}{size}{ratio}"


def cell_stats(sel: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """One cell over its seeds: today's fields (value, n, status, error, seeds) plus the interval."""
    ok = [r for r in sel if r["status"] == "ok"]
    s: Summary | None = summarize(value(r, metric) for r in ok)
    statuses = sorted({r["status"] for r in sel})
    # Every metric here is an accuracy: an interval past 0 or 1 (three seeds, a large sd) says nothing more
    # than one that stops there.
    return {"value": None if s is None else s.mean, "n": 0 if s is None else s.n,
            "std": None if s is None else s.std,
            "ci_low": None if s is None or s.ci_low is None else max(0.0, s.ci_low),
            "ci_high": None if s is None or s.ci_high is None else min(1.0, s.ci_high),
            # the t half-width before the clip: "40.8±49.7" with [0, 90.6], never a ± that matches neither bound
            "half_width": None if s is None else s.half_width,
            "status": "ok" if ok else statuses[0], "error": next((r["error"] for r in sel if r.get("error")), None),
            "seeds": len(sel), "failed": len(sel) - len(ok), "weak": any(bool(r.get("weak")) for r in sel)}


# Plausibility: no exploiter on protected data should beat the same setting's unprotected victims by more
# than this, beyond their interval. The victim's own seed-to-seed sd on clean digits is ~1.2 points and a
# 355-image test split has a binomial sd of ~1.3 points at 94 %, so 5 points is about four sd: a cell over it
# learnt from something the threat model does not give the attacker (test images, the clean split).
SUSPICIOUS_MARGIN = 0.05


def suspicious(rs: list[dict[str, Any]], metric: str) -> set[tuple[str, str, str]]:
    """(protector, exploiter, architecture) labels of the cells whose seed mean is above every unprotected
    cell (protector ``none``, any exploiter) of the same setting and architecture, by more than
    :data:`SUSPICIOUS_MARGIN` beyond that cell's 95 % upper bound (its mean when it has one seed)."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rs:
        v = value(r, metric) if r["status"] == "ok" else None
        if v is not None:
            groups[(r["protector_label"], r["exploiter_label"], r["architecture_label"])].append(v)
    ceiling: dict[str, float] = {}
    names = {r["protector_label"]: r["protector"] for r in rs}
    for (p, _e, a), vs in groups.items():
        if names.get(p) == BASELINE:
            st = summarize(vs)
            top = st.ci_high if st is not None and st.ci_high is not None else max(vs)
            ceiling[a] = max(ceiling.get(a, -math.inf), top)
    return {(p, e, a) for (p, e, a), vs in groups.items()
            if names.get(p) != BASELINE and a in ceiling and statistics.fmean(vs) > ceiling[a] + SUSPICIOUS_MARGIN}


def _full(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("train_subset") != CONTROL]


def matrices(rows: list[dict[str, Any]], metric: str = "clean_acc") -> list[dict[str, Any]]:
    """One matrix per setting and architecture (label and recipe); cells summarize over seeds."""
    rows = normalize(rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in _full(rows):
        groups[(*setting_key(r), r["architecture_label"], r.get("recipe"))].append(r)
    # Partial-poisoning controls (clean part only, so a smaller train set), per setting and architecture.
    ctrl_vals: dict[tuple, list[float | None]] = defaultdict(list)
    for r in rows:
        if r.get("train_subset") == CONTROL and r["status"] == "ok":
            ctrl_vals[(*base_key(r), r["architecture_label"], r.get("recipe"))].append(value(r, metric))
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        prot = _none_first(dict.fromkeys(r["protector_label"] for r in rs))
        expl = _none_first(dict.fromkeys(r["exploiter_label"] for r in rs))
        by: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in rs:
            by[(r["protector_label"], r["exploiter_label"])].append(r)
        cells: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        odd = suspicious(rs, metric)
        for (p, e), sel in by.items():
            cells[p][e] = cell_stats(sel, metric)
            cells[p][e]["suspicious"] = (p, e, key[5]) in odd
        ctrl = summarize(ctrl_vals.get((*key[:4], key[5], key[6]), []))
        out.append({**_setting_dict(key[:5]), "architecture": key[5], "recipe": key[6],
                    "protectors": prot, "exploiters": expl, "cells": dict(cells),
                    "control": None if ctrl is None else ctrl.mean, "metric": metric})
    return out


def threat_model(kind: str | None, val: float | None) -> str:
    """The declared budget as people write it: ``linf 8/255``, ``l2 1``, ``patch 0.16``, ``unbounded``."""
    if kind is None:
        return "unknown"
    if kind == "none":
        return "unbounded"
    if val is None:
        return kind
    if kind == "linf":
        levels = val * 255
        return f"linf {round(levels)}/255" if abs(levels - round(levels)) < 0.05 else f"linf {val:.4g}"
    return f"{kind} {val:.3g}"


def _threat(rs: list[dict[str, Any]]) -> str:
    seen = Counter(threat_model(r.get("budget_kind"), r.get("budget_value")) for r in rs)
    known = [t for t, _ in seen.most_common() if t != "unknown"]
    return known[0] if known else "unknown"


def _interval(d: dict[str, Any]) -> tuple[float, float]:
    """The worst case's interval, or the point itself with one seed (no spread known: ties only on equality)."""
    return (d["ci_low"], d["ci_high"]) if d["ci_low"] is not None else (d["worst_case_acc"], d["worst_case_acc"])


def _assign_ranks(entries: list[dict[str, Any]]) -> None:
    """Rank = 1 + the protectors whose whole interval lies below this one's: overlapping intervals tie."""
    ranked = [d for d in entries if d["complete"] and d["worst_case_acc"] is not None]
    for d in ranked:
        d["rank"] = 1 + sum(1 for o in ranked if o is not d and _interval(o)[1] < _interval(d)[0])
    counts = Counter(d["rank"] for d in ranked)
    for d in entries:
        r = d.get("rank")
        d["rank"] = r
        d["rank_shown"] = "-" if r is None else (f"={r}" if counts[r] > 1 else str(r))


def _describe_missing(e: str, a: str, seed: Any, rs: list[dict[str, Any]]) -> str:
    status = rs[0]["status"] if rs else "absent"
    return f"{e} / {a} s{seed}: {status}"


def rankings(rows: list[dict[str, Any]], metric: str = "clean_acc") -> dict[str, list[dict[str, Any]]]:
    """Protector tables (one per setting and threat model), a flat list of their entries, protectors with
    no usable cell, and the exploiter ranking per setting. Only full-poisoning rows are ranked."""
    rows = [r for r in _full(normalize(rows)) if (r.get("poison_ratio") or 0) >= 1.0]
    by_setting: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_setting[setting_key(r)].append(r)
    tables: list[dict[str, Any]] = []
    unranked: list[dict[str, Any]] = []
    exploiters: list[dict[str, Any]] = []
    for skey, rs in sorted(by_setting.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        setting = _setting_dict(skey)
        cells: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
        for r in rs:
            cells[(r["protector_label"], r["exploiter_label"], r["architecture_label"])].append(r)
        stats = {k: cell_stats(v, metric) for k, v in cells.items()}
        odd = suspicious(rs, metric)
        # What the grid has: per architecture, every exploiter any protector has there, and per exploiter
        # there every seed (an exploiter entry may run on fewer seeds than the tournament: ``seeds:``).
        arch_e: dict[str, set[str]] = defaultdict(set)
        arch_s: dict[tuple[str, str], set[Any]] = defaultdict(set)
        for r in rs:
            arch_e[r["architecture_label"]].add(r["exploiter_label"])
            arch_s[(r["architecture_label"], r["exploiter_label"])].add(r.get("seed"))
        per_prot: dict[str, list[dict]] = defaultdict(list)
        for r in rs:
            per_prot[r["protector_label"]].append(r)
        entries = []
        for p, prs in per_prot.items():
            have: dict[tuple[str, str, Any], list[dict]] = defaultdict(list)
            for r in prs:
                have[(r["exploiter_label"], r["architecture_label"], r.get("seed"))].append(r)
            missing = []
            for a in sorted({r["architecture_label"] for r in prs}):
                for e in _none_first(sorted(arch_e[a])):
                    for s in sorted(arch_s[(a, e)], key=str):
                        got = have.get((e, a, s), [])
                        if not any(r["status"] == "ok" for r in got):
                            missing.append(_describe_missing(e, a, s, got))
            mine = {(e, a): c for (pp, e, a), c in stats.items()
                    if pp == p and c["value"] is not None and (pp, e, a) not in odd}
            left_out = sorted(f"{e} / {a}" for (pp, e, a) in odd if pp == p)
            name = prs[0]["protector"]
            base = {**setting, "protector": p, "protector_name": name, "baseline": name == BASELINE,
                    "threat_model": _threat(prs), "has_invalid": any(r["status"] == "invalid" for r in prs),
                    "complete": not missing, "missing": missing, "settings": 1, "suspicious": left_out}
            if not mine:
                unranked.append({**base, "reason": f"no ok cell with {metric}"})
                continue
            (we, wa), wc = max(mine.items(), key=lambda kv: kv[1]["value"])
            entries.append({**base, "worst_case_acc": wc["value"], "ci_low": wc["ci_low"], "ci_high": wc["ci_high"],
                            "half_width": wc["half_width"], "n": wc["n"], "strongest_exploiter": we, "strongest_architecture": wa})
        threats = sorted({d["threat_model"] for d in entries if not d["baseline"]}, key=lambda t: (t == "unbounded", t))
        for t in threats or ["baseline only"]:
            members = [dict(d) for d in entries if d["threat_model"] == t or d["baseline"]]
            for d in members:
                d["table"] = t
            members.sort(key=lambda d: (not d["complete"], d["worst_case_acc"]))
            _assign_ranks(members)
            tables.append({**setting, "threat_model": t, "unbounded": t == "unbounded", "protectors": members})
        exploiters += _exploiter_ranking(setting, rs, metric)
    flat = [d for t in tables for d in t["protectors"]]
    return {"protectors": flat, "tables": tables, "unranked": unranked, "exploiters": exploiters}


def _exploiter_ranking(setting: dict[str, Any], rs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Mean accuracy over real protectors' cells, and the paired gain over the ``none`` exploiter."""
    by_seed: dict[tuple[str, str, str, Any], float] = {}
    acc: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rs:
        v = value(r, metric) if r["status"] == "ok" else None
        if v is None or r["protector"] == BASELINE:
            continue
        by_seed[(r["exploiter_label"], r["protector_label"], r["architecture_label"], r.get("seed"))] = v
        acc[r["exploiter_label"]][(r["protector_label"], r["architecture_label"])].append(v)
    none_label = next((r["exploiter_label"] for r in rs if r["exploiter"] == BASELINE), BASELINE)
    out = []
    for e, cells in acc.items():
        gains = [v - by_seed[(none_label, p, a, s)] for (ee, p, a, s), v in by_seed.items()
                 if ee == e and (none_label, p, a, s) in by_seed]
        g = summarize(gains)
        out.append({**setting, "exploiter": e, "mean_acc": statistics.fmean(statistics.fmean(v) for v in cells.values()),
                    "cells": len(cells), "mean_recovered": None if g is None else g.mean,
                    "gain_ci_low": None if g is None else g.ci_low, "gain_ci_high": None if g is None else g.ci_high,
                    "pairs": 0 if g is None else g.n})
    out.sort(key=lambda d: -d["mean_acc"])
    for i, d in enumerate(out, 1):
        d["rank"] = i
    return out


def noise_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tournament, data set and protector, the arena's own measures of the noise (the same for every
    exploiter of a protect stage, so averaged over its distinct seeds) and how many of its cells are weak: the
    evidence a reader weighs a protector's accuracy against."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "ok":
            # a protect stage is per data set and seed: two data sets of one tournament are two summaries
            key = (r["tournament"], r["dataset"], r.get("protector_label") or r["protector"])
            groups.setdefault(key, []).append(r)
    out = []
    for (tournament, dataset, label), rs in groups.items():
        per_seed = {r["seed"]: r for r in rs}.values()  # one protect stage per seed (first architecture's)

        def mean(col: str, _rs: Any = per_seed) -> float | None:
            vals = [r[col] for r in _rs if r.get(col) is not None]
            return sum(vals) / len(vals) if vals else None

        out.append({"tournament": tournament, "dataset": dataset, "protector": label, "seeds": len(per_seed),
                    "separability": mean("noise_separability"), "class_share": mean("noise_class_share"),
                    "weak_cells": sum(bool(r.get("weak")) for r in rs), "cells": len(rs)})
    return out


def cell_text(c: dict[str, Any] | None, pct: bool = True) -> str:
    """Plain text of a cell: ``45.2``, ``45.2±3.1`` (95 % half-width, n > 1), ``failed``, ``n/a``; a trailing
    ``w`` marks weak protection, ``!`` some failed seeds and ``?`` a suspicious cell (above every
    unprotected cell of its setting: see :func:`suspicious`)."""
    if c is None:
        return ""
    if c["value"] is None:
        return c["status"] if c["status"] != "ok" else "n/a"
    k = 100 if pct else 1
    txt = f"{k * c['value']:.1f}"
    if c.get("ci_high") is not None:
        txt += f"±{k * c['half_width']:.1f}"
    return (txt + ("w" if c.get("weak") else "") + ("!" if c.get("failed") else "")
            + ("?" if c.get("suspicious") else ""))


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
                txt = cell_text(c).replace("±", "\n±") if c and c["value"] is not None else cell_text(c)
                ax.text(j, i, txt, ha="center", va="center", fontsize=7 if "\n" in txt else 8)
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
