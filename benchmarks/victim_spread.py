"""Whose spread is it? The protect stage's seed against the victim's, for each protector at a tournament's settings.

``benchmarks/stability.py`` varies one seed per cell, and that seed drives both the protect stage (surrogate
init, batch order, random starts) and the victim (init, batch order, crops). When a protector's accuracy swings
from seed to seed, the fix depends on which of the two swings: a protect stage that converges to different
noise needs more steps or a better stop test; a victim that races the noise's shortcut against the image
content on a fixed protected set is the method's behaviour at that scale, and no protect setting removes it.

This script separates the two: it protects the tournament's train split once per protect seed and trains V
victims (seeds 100, 101, ...) on each protected set, exploiter ``none``, the tournament's data, recipe and
protector params, the first architecture. It prints, per protector, the victims' sd on each fixed protected
set ("within") and the sd of the per-protect-seed means ("between"), and beside each set's accuracies the
share of the clean test images its victims send to their two most-predicted classes ("top-2"; 0.2 for a
victim that spreads its predictions like the ten balanced classes): a victim that learned the shortcut and
little content sends the shortcut-less test images to the classes whose shortcut looks most like its absence.
Per set the JSON also holds the noise's class share (``benchmarks/common.py``), its separability (the protect
stage's own metric) and each victim's prediction counts::

    python benchmarks/victim_spread.py tournaments/quick.yaml --protect-seeds 0,1,2 --victims 4 \\
        --protectors emn-samplewise,sem --json benchmarks/results/victim-spread-quick.json

The protect stage goes through ``arena.stages.run_protect`` (the contract and budget checks of a tournament).
Victims are built and trained as ``arena.stages.run_train`` does for exploiter ``none`` (``build_model`` and
``train_victim`` with the victim's seed; the accuracies are the same bit for bit), called directly so the
script keeps the model to count its predictions. A pool of ``--workers`` processes with one torch thread each;
nothing is cached: it is a measurement, not a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _job(path: str, label: str, protect_seed: int, victims: list[int], sets: list[str]) -> dict[str, Any]:
    """Protect once, then train every victim on that protected set: one worker process's unit of work."""
    import torch

    torch.set_num_threads(1)
    from common import noise_class_share

    from arena.context import Context
    from arena.models import build_model
    from arena.registry import get_registry
    from arena.splits import load_splits
    from arena.stages import run_protect
    from arena.trainer import Recipe, train_victim

    cfg = _config(path, sets)
    ds = cfg.datasets[0]
    splits = load_splits(ds.name, ds.params, ds.root, ds.download, ds.train, ds.test, ds.raw_fraction, cfg.split_seed)
    spec = next(p for p in cfg.protectors if p.entry_label == label)
    protector = get_registry().protector(spec.name, spec.params)
    arch = cfg.architectures[0]
    recipe = arch.recipe
    # a tournament hands the victim recipe only to protectors that declare they use it (arena/tournament/grid.py)
    ctx = Context(seed=protect_seed, recipe=recipe if getattr(protector, "uses_recipe", False) else Recipe())
    prot = run_protect(protector, splits.train, ctx)
    accs, hists = [], []
    for v in victims:
        model = build_model(arch.name, splits.train.num_classes, *splits.train.shape[:2], seed=v)
        res = train_victim(model, prot.data, splits.test, recipe, seed=v)
        accs.append(100 * res.clean_acc)
        hists.append(_prediction_counts(model, splits.test))
    return {"protector": label, "protect_seed": protect_seed, "victims": victims, "acc": accs,
            "test_predictions": hists, "protect_s": prot.seconds, "info": prot.info,
            "noise": {**noise_class_share(splits.train, prot.data),
                      "separability": prot.metrics["noise_separability"]}}


def _prediction_counts(model: Any, test: Any) -> list[int]:
    """How many clean test images the victim assigns to each class. A victim that learned a shortcut and
    little content sends the clean images (which lack the shortcut) to the few classes whose shortcut looks
    most like its absence: the count says which classes those are."""
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(test.images[i:i + 512].float().div(255)).argmax(1)
                          for i in range(0, len(test), 512)])
    return torch.bincount(pred, minlength=test.num_classes).tolist()


def _config(path: str, sets: list[str]) -> Any:
    """The tournament at ``path`` with the ``--set`` overrides applied."""
    from common import tournament_raw

    from arena.tournament.config import parse_config

    return parse_config(tournament_raw(path, sets), Path(path))


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per protector: the victims' sd on each fixed protected set, its pooled value, and the between-set sd."""
    out: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r["protector"] for r in results):
        rs = sorted((r for r in results if r["protector"] == label), key=lambda r: r["protect_seed"])
        means = [statistics.fmean(r["acc"]) for r in rs]
        within = [statistics.stdev(r["acc"]) for r in rs if len(r["acc"]) > 1]
        out[label] = {
            "sets": [{"protect_seed": r["protect_seed"], "acc": [round(a, 1) for a in r["acc"]],
                      "mean": round(statistics.fmean(r["acc"]), 1),
                      # share of the clean test images the victims send to their two most-predicted classes
                      "top2_share": round(statistics.fmean(sum(sorted(h)[-2:]) / sum(h)
                                                           for h in r.get("test_predictions") or [[1]]), 2),
                      "sd": round(statistics.stdev(r["acc"]), 1) if len(r["acc"]) > 1 else None} for r in rs],
            # pooled within-set sd: the square root of the mean within-set variance (equal victim counts)
            "within_sd": round(statistics.fmean(s * s for s in within) ** 0.5, 1) if within else None,
            "between_sd": round(statistics.stdev(means), 1) if len(means) > 1 else None,
            "all_mean": round(statistics.fmean(a for r in rs for a in r["acc"]), 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tournament", help="tournament YAML whose data, recipe and protector params are used")
    ap.add_argument("--protectors", default=None, help="comma-separated entry labels (default: all in the file)")
    ap.add_argument("--protect-seeds", default="0,1,2", help="comma-separated protect seeds")
    ap.add_argument("--victims", type=int, default=4, help="victims per protected set (seeds 100, 101, ...)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    ap.add_argument("--json", default=None, help="write the per-victim results and the summary here")
    ap.add_argument("--set", action="append", default=[], metavar="LABEL.PARAM=VALUE",
                    help="override a protector param (or recipe.FIELD); repeatable")
    a = ap.parse_args(argv)

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    cfg = _config(a.tournament, a.set)
    labels = [p.entry_label for p in cfg.protectors]
    if a.protectors:
        wanted = [s.strip() for s in a.protectors.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in labels]
        if unknown:
            ap.error(f"--protectors: '{unknown[0]}' is not an entry of {a.tournament}; entries: {', '.join(labels)}")
        labels = wanted
    seeds = [int(s) for s in a.protect_seeds.split(",") if s.strip()]
    victims = list(range(100, 100 + a.victims))
    jobs = [(a.tournament, label, s, victims, a.set) for label in labels for s in seeds]
    results = []
    with ProcessPoolExecutor(max_workers=a.workers) as pool, Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("protected sets", total=len(jobs))
        for r in pool.map(_job, *zip(*jobs)):
            results.append(r)
            bar.advance(task)
    summary = summarize(results)
    t = Table(title=f"{cfg.name}: victims {victims[0]}-{victims[-1]} on each protected set, exploiter none, clean %")
    for col in ("protector", "within sd", "between sd", "mean", *[f"protect seed {s}" for s in seeds]):
        t.add_column(col)
    for label, s in summary.items():
        sets = [f"{x['mean']:.1f} ({' '.join(f'{v:.0f}' for v in x['acc'])}; top-2 {x['top2_share']:.2f})"
                for x in s["sets"]]
        t.add_row(label, str(s["within_sd"]), str(s["between_sd"]), f"{s['all_mean']:.1f}", *sets)
    Console(width=220).print(t)
    if a.json:
        Path(a.json).write_text(json.dumps({"tournament": a.tournament, "set": a.set, "results": results,
                                            "summary": summary},
                                           indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
