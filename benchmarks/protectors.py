"""Benchmark the protectors: protect N images of one data set with each, train a victim, compare to the papers.

Runs every registered protector (or the ones named with ``--protectors``) on the same class-balanced
train subset, through the arena's own stage functions (``run_protect`` checks shape, labels and the
budget after uint8 quantization; ``run_train`` trains the victim), so a row measures exactly what a
tournament cell would. For each protector it records clean test accuracy (final and best over epochs),
noise L-inf in 1/255 units, PSNR, SSIM, protect and train wall seconds and the protector's
``last_info`` (rounds, surrogate accuracy, cache hit ...), then prints one table with the papers'
CIFAR-10 numbers beside the measured ones.

The defaults are the papers' setting (5,000 CIFAR-10 images, ResNet-18 victim, 60 epochs, every
protector at its paper defaults): a GPU job. Size it for a CPU with the flags, for example::

    python benchmarks/protectors.py --train 2000 --test 1000 --arch cnn-small --epochs 15 \\
        --surrogate cnn-small --params '{"sem": {"train_steps": 300}, "rem": {"train_steps": 300}}' \\
        --threads 2 --out benchmarks/results/protectors.jsonl

Runs split over several processes (one ``--out`` file each) are put together with ``--report A.jsonl B.jsonl``,
which prints the table from the rows and, with ``--plot PNG``, draws each protector's accuracy as a share of
the clean victim's beside the paper's share.

``--quick`` is a seconds-long smoke run (digits 16 px, tiny params) that only checks the script works.
Every protector's output is cached under ``--cache-dir`` (keyed by data, params, seed, code version),
so a rerun after a crash or with another victim skips the protection.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from common import emit, progress, splits_for

from arena import ArenaError, Context, Recipe
from arena.registry import get_registry
from arena.stages import run_protect, run_train

SURROGATE_KEYS = ("surrogate", "classifier")  # the param that names a protector's own model, by convention

# Clean test accuracy (%) of a ResNet-18 trained on 100 % protected CIFAR-10 (standard training with
# crop + flip), as published; the paper's full train split (50,000), not a subset.
PAPER: dict[str, str] = {
    "none": "94.95 (EMN paper), 94.7 (SEM paper)",
    "emn-samplewise": "19.9 (EMN paper)",
    "emn-classwise": "16.4 (EMN paper)",
    "sem": "13.0 (SEM paper, victim rho_a = 0)",
    "rem": "15.2 (SEM paper, victim rho_a = 0)",
    "confoundergan": "14.9 (ConfounderGAN paper, flip+crop)",
    "classwise-noise": "n/a (no CIFAR-10 number in METHODS.md)",
    "classwise-patch": "n/a (ImageNet-25 only: 70.9 -> 35.4)",
}

# The same numbers as (accuracy, that paper's clean accuracy), for the picture's "share of clean accuracy
# left". METHODS.md gives no clean figure from the ConfounderGAN paper; the EMN paper's stands in for it.
PAPER_RATIO: dict[str, tuple[float, float]] = {
    "emn-samplewise": (19.9, 94.95), "emn-classwise": (16.4, 94.95), "sem": (13.0, 94.7),
    "rem": (15.2, 94.7), "confoundergan": (14.9, 94.95),
}

# --quick: a few seconds per protector on digits 16 px; proves the script runs, measures nothing.
QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "emn-samplewise": {"surrogate": "cnn-small", "pgd_steps": 2, "max_rounds": 2},
    "emn-classwise": {"surrogate": "cnn-small", "max_rounds": 2},
    "sem": {"surrogate": "cnn-small", "train_steps": 3, "samples": 1, "def_steps": 2, "atk_steps": 1},
    "rem": {"surrogate": "cnn-small", "train_steps": 3, "samples": 1, "def_steps": 2, "atk_steps": 1},
    "confoundergan": {"classifier": "cnn-small", "classifier_epochs": 1, "epochs": 1, "blocks": 1},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protectors", default="all",
                    help="comma-separated registered protector names, or 'all' (default)")
    ap.add_argument("--params", default="{}",
                    help='JSON object: protector name -> params, e.g. \'{"sem": {"train_steps": 300}}\'')
    ap.add_argument("--surrogate", default=None,
                    help="sets the 'surrogate' (or 'classifier') param of every protector that has one")
    ap.add_argument("--arch", default="resnet18", help="victim architecture")
    ap.add_argument("--dataset", default="imagefolder")
    ap.add_argument("--root", default="/work/shared/datasets/cifar10-jpeg", help="data root (imagefolder etc.)")
    ap.add_argument("--size", type=int, default=32, help="image side in px")
    ap.add_argument("--train", type=int, default=5000, help="protected train images (class-balanced subset)")
    ap.add_argument("--test", type=int, default=None, help="clean test images (class-balanced subset; all if unset)")
    ap.add_argument("--epochs", type=int, default=60, help="victim epochs")
    ap.add_argument("--batch-size", type=int, default=128, help="victim batch size")
    ap.add_argument("--lr", type=float, default=0.1, help="victim peak learning rate (cosine)")
    ap.add_argument("--crop-pad", type=int, default=4, help="victim random-crop padding (0 = off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--cache-dir", default=None, help="protector cache (reruns are free); default: a temp dir")
    ap.add_argument("--out", default=None, help="append one JSON line per protector to this file")
    ap.add_argument("--report", nargs="+", metavar="ROWS.jsonl", default=None,
                    help="run nothing: print the table (and --plot) from rows earlier runs wrote with --out")
    ap.add_argument("--plot", default=None, metavar="PNG",
                    help="also draw each protector's share of the clean victim's accuracy beside the paper's")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: digits 16 px, 200 train images, cnn-small, 2 epochs, tiny params")
    a = ap.parse_args(argv)
    if a.quick:
        a.dataset, a.size, a.train, a.test, a.arch, a.epochs, a.crop_pad = "digits", 16, 200, 100, "cnn-small", 2, 2
    return a


def protector_params(name: str, cls: type, a: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    params = dict(QUICK_PARAMS.get(name, {})) if a.quick else {}
    names = {p.name for p in cls.params.params}
    if a.surrogate is not None:
        key = next((k for k in SURROGATE_KEYS if k in names), None)
        if key is not None:
            params[key] = a.surrogate
    params.update(given.get(name, {}))
    return params


def run_one(name: str, params: dict[str, Any], splits: Any, a: argparse.Namespace, ctx: Context) -> dict:
    reg = get_registry()
    protector = reg.protector(name, params)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prot = run_protect(protector, splits.train, ctx)
    protect_s = time.perf_counter() - t0
    recipe = Recipe(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, crop_pad=a.crop_pad)
    res = run_train(a.arch, prot.data, splits.test, recipe, seed=a.seed, ctx=ctx, description=f"victim ({name})")
    return {
        "protector": name, "params": protector.p, "dataset": a.dataset, "size": a.size,
        "train": len(splits.train), "test": len(splits.test), "arch": a.arch, "epochs": a.epochs,
        "seed": a.seed, "clean_acc": round(res.clean_acc, 4), "best_acc": round(res.best_acc, 4),
        "noise_linf_255": round(prot.metrics["noise_linf"] * 255, 2),
        "psnr": round(prot.metrics.get("psnr", float("nan")), 2),
        "ssim": round(prot.metrics.get("ssim", float("nan")), 4),
        "protect_s": round(protect_s, 1), "train_s": round(res.seconds, 1),
        "info": getattr(protector, "last_info", {}),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
        "device": a.device if a.device != "cpu" else f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
        "date": dt.date.today().isoformat(), "acc_curve": [round(x, 4) for x in res.acc_curve],
        "paper": PAPER.get(name, "n/a"),
    }


def table(rows: list[dict]) -> str:
    """A Markdown table: measured numbers beside the papers'."""
    head = ("| protector | clean acc % (final / best) | paper, CIFAR-10 ResNet-18 % | L-inf /255 | PSNR | SSIM "
            "| protect s | train s |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['protector']} | failed: {r['error']} | {PAPER.get(r['protector'], 'n/a')} "
                         "| | | | | |")
            continue
        lines.append(f"| {r['protector']} | {100 * r['clean_acc']:.1f} / {100 * r['best_acc']:.1f} | {r['paper']} "
                     f"| {r['noise_linf_255']:g} | {r['psnr']:.1f} | {r['ssim']:.3f} | {r['protect_s']:.0f} "
                     f"| {r['train_s']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Bars of accuracy / clean accuracy per protector, measured beside published: absolute accuracies of a
    CPU-sized run and of the papers' full-data ResNet-18 are not comparable, their ratios roughly are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    clean = next((r["clean_acc"] for r in ok if r["protector"] == "none"), None)
    if not clean:
        raise ArenaError("--plot needs a row for protector 'none' (the clean victim the ratios divide by)")
    shown = [r for r in ok if r["protector"] != "none"]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(shown) + 2))
    ys = range(len(shown))
    ax.barh([y + 0.2 for y in ys], [r["clean_acc"] / clean for r in shown], height=0.4, label="measured")
    paper = [PAPER_RATIO.get(r["protector"], (0.0, 1.0)) for r in shown]  # no published number: no bar
    ax.barh([y - 0.2 for y in ys], [acc / c for acc, c in paper], height=0.4, label="paper (ResNet-18, full CIFAR-10)")
    ax.set_yticks(list(ys), [r["protector"] for r in shown])
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, *(r["clean_acc"] / clean for r in shown)) * 1.05)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("victim's clean test accuracy / unprotected victim's (lower protects more)")
    r0 = ok[0]
    ax.set_title(f"{r0['dataset']} {r0['size']} px, {r0['train']} images, {r0['arch']} {r0['epochs']} epochs", fontsize=10)
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(paths: list[str], plot_path: str | None) -> list[dict]:
    rows = []
    for p in paths:
        if not Path(p).is_file():
            raise ArenaError(f"--report {p}: no such file (give the --out files of earlier runs)")
        for n, line in enumerate(Path(p).read_text().splitlines(), 1):
            try:
                rows += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as e:
                raise ArenaError(f"--report {p}, line {n}: not a JSON row ({e.msg})") from None
    print(table(rows))
    if plot_path:
        plot(rows, plot_path)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse_args(argv)
    if a.report:
        return report(a.report, a.plot)
    if a.threads:
        torch.set_num_threads(a.threads)
    reg = get_registry()
    try:
        given = json.loads(a.params)
    except json.JSONDecodeError as e:
        raise ArenaError(f"--params is not JSON: {e}") from None
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        raise ArenaError('--params must map protector names to param objects, e.g. {"sem": {"train_steps": 300}}')
    names = reg.names("protectors") if a.protectors == "all" else [n.strip() for n in a.protectors.split(",") if n]
    for n in [*names, *given]:
        reg.entry("protectors", n)  # an unknown name fails here, before any compute, listing the valid ones
    # Validate every protector's params before the (slow) data load and the first run.
    params = {n: protector_params(n, reg.entry("protectors", n).obj, a, given) for n in names}
    for n in names:
        reg.protector(n, params[n])

    splits = splits_for(a.dataset, a.size, a.root, a.train, a.test, a.seed)
    ctx = Context(device=torch.device(a.device), seed=a.seed, cache_dir=Path(a.cache_dir) if a.cache_dir else None, progress=progress())

    rows: list[dict] = []
    for n in names:
        try:
            row = run_one(n, params[n], splits, a, ctx)
        except ArenaError as e:  # a budget violation or contract error is a result, not a crash
            row = {"protector": n, "params": params[n], "error": str(e)}
        rows.append(row)
        emit(row, a.out)
    print()
    print(f"{a.dataset} {a.size}px, {len(splits.train)} train / {len(splits.test)} test, victim {a.arch} "
          f"{a.epochs} epochs, device {rows[0].get('device', a.device) if rows else a.device}")
    print(table(rows))
    if a.plot:
        plot(rows, a.plot)
    return rows


if __name__ == "__main__":
    try:
        main()
    except ArenaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
