"""Does a SEM/REM victim's accuracy follow the noise's class share? Spearman over committed victim_spread results.

Reads the per-set results of ``benchmarks/victim_spread.py`` (``noise.class_share`` and the victims' accuracies)
for SEM and REM from the JSON files given; a file whose sets lack accuracies for more than one victim takes each
set's mean from ``--means`` (same protector and protect seed), so the one-victim diagnostics run of the old quick
settings pairs with its 4-victim means::

    python benchmarks/class_share_correlation.py benchmarks/results/victim-spread-sem-rem-def10.json \\
        benchmarks/results/victim-spread-sem-rem-def10-j5.json benchmarks/results/victim-spread-sem-rem-final10.json \\
        benchmarks/results/victim-spread-quick-diagnostics.json --means benchmarks/results/victim-spread-quick.json
"""

from __future__ import annotations

import argparse
import json
import statistics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--means", default=None, help="victim_spread JSON whose per-set means replace one-victim sets")
    a = ap.parse_args(argv)
    from scipy.stats import spearmanr

    means = {}
    if a.means:
        means = {(r["protector"], r["protect_seed"]): statistics.fmean(r["acc"])
                 for r in json.load(open(a.means))["results"]}
    share, acc = [], []
    for f in a.files:
        for r in json.load(open(f))["results"]:
            if r["protector"] not in ("sem", "rem") or "class_share" not in r.get("noise", {}):
                continue
            key = (r["protector"], r["protect_seed"])
            share.append(r["noise"]["class_share"])
            acc.append(means[key] if len(r["acc"]) == 1 and key in means else statistics.fmean(r["acc"]))
    rho, p = spearmanr(share, acc)
    print(f"{len(share)} SEM/REM protected sets: Spearman {rho:.2f} (p = {p:.1e}) between class share and victim accuracy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
