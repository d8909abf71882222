"""Benchmark JCDP (and its unconditional ablation) against sample-wise EMN on the shared CIFAR-10 copy.

The paper (Jiang et al., ACM MM 2023; CIFAR-10, ResNet-18, DDPM trained on the clean CIFAR-10 train
split, N = 4, T_p = 20) reports EMN 21.2 -> 93.1 % with JCDP and 90.6-91.9 % for unconditional
purification. Here the attacker's DDPM is trained on the arena's raw pool only, and everything goes
through the arena's stage functions (``run_protect`` -> ``run_purify`` -> ``run_train``), so each row is
what a tournament cell records.

Sized for the 2-core CPU machine (about 15 minutes, estimated from per-step costs; not yet run end to end)::

    python benchmarks/jcdp.py --threads 2 --out benchmarks/results/jcdp.jsonl

which means: 1,000 protected train / 1,000 test / 1,000 raw-pool CIFAR-10 images at 32 px; sample-wise
EMN with a cnn-small surrogate (stop at 95 % surrogate accuracy); the CPU DDPM preset (1 M params,
32-64-64 channels) trained 400 steps on the raw pool; purification with N = 2 rounds of T_p = 20
(the paper: N = 4) for ``jcdp`` (default lambdas) and ``jcdp-uncond``; cnn-small victim, 12 epochs.
Every flag sizes one of these (``--train --test --raw --epochs --arch --ddpm-steps --preset --n-rounds
--t-p --lambda1 --lambda2 --rows``). The digits measurement in benchmarks/results/jcdp.md (the quick
tournament's setting) is::

    python benchmarks/jcdp.py --dataset digits --size 16 --train 0 --test 0 --raw 0 --epochs 15 \
        --crop-pad 2 --emn-params '{"surrogate": "cnn-small", "pgd_steps": 5, "step": 0.0125}' \
        --ddpm-channels 8,16 --ddpm-steps 200 --t-p 40 --n-rounds 1 --lambda1 10 --lambda2 0 --threads 1
 On a GPU, ``--preset paper --ddpm-steps 20000 --train 10000
--raw 10000 --arch resnet18 --epochs 60 --n-rounds 4`` is nearer the paper. ``--quick`` is a
seconds-long smoke run of this script (its numbers mean nothing).

Prints one ``RESULT {json}`` line per row (also appended to ``--out``) and a table next to the paper.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from common import emit, progress, splits_for

from arena import Context, Recipe
from arena.registry import get_registry
from arena.stages import run_protect, run_purify, run_train

PAPER = {
    ("clean", "none"): "94.95 (EMN paper)",
    ("emn-samplewise", "none"): "21.2",
    ("emn-samplewise", "jcdp"): "93.1",
    ("emn-samplewise", "jcdp-uncond"): "90.6-91.9 (unconditional, over EMN/REM/LSP)",
}
CPU_EMN = {"surrogate": "cnn-small", "pgd_steps": 10, "stop_error": 0.05, "max_rounds": 40}
QUICK_EMN = {"surrogate": "cnn-small", "pgd_steps": 1, "max_rounds": 1, "batch_size": 32}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="imagefolder", help="registered data set (imagefolder reads --root)")
    ap.add_argument("--root", default="/work/shared/datasets/cifar10-jpeg")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--train", type=int, default=1000, help="protected train images (0: all)")
    ap.add_argument("--test", type=int, default=1000, help="clean test images (0: all)")
    ap.add_argument("--raw", type=int, default=1000, help="raw-pool images the DDPM trains on (0: all of "
                    "the raw split, 10%% of the original train split)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--crop-pad", type=int, default=4, help="victim random-crop padding (2 at 16 px)")
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--emn-params", default=None, help="JSON params of emn-samplewise (default: cheap CPU ones)")
    ap.add_argument("--preset", default="cpu", help="DDPM preset: cpu or paper")
    ap.add_argument("--ddpm-channels", default=None, help="e.g. 32,64,64 (default: the preset's)")
    ap.add_argument("--ddpm-steps", type=int, default=400)
    ap.add_argument("--n-rounds", type=int, default=2)
    ap.add_argument("--t-p", type=int, default=20)
    ap.add_argument("--lambda1", type=float, default=None, help="default: the plugin's")
    ap.add_argument("--lambda2", type=float, default=None, help="default: the plugin's")
    ap.add_argument("--rows", default="none,jcdp,jcdp-uncond", help="exploiter rows on EMN data")
    ap.add_argument("--no-clean", action="store_true", help="skip the clean-data row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cache-dir", default="/tmp/arena-bench-jcdp", help="EMN and DDPM cache (a rerun reuses them)")
    ap.add_argument("--out", default=None, help="append RESULT rows (JSON lines) here")
    ap.add_argument("--quick", action="store_true", help="a few-seconds smoke run of this script")
    a = ap.parse_args(argv)
    emn = json.loads(a.emn_params) if a.emn_params else CPU_EMN
    if a.quick:
        a.train, a.test, a.raw, a.epochs, a.ddpm_steps, a.n_rounds, a.t_p = 64, 64, 64, 1, 5, 1, 3
        a.ddpm_channels, emn = "8,16", QUICK_EMN
        a.cache_dir = a.cache_dir + "-quick"
    if a.threads:
        torch.set_num_threads(a.threads)
    reg = get_registry()
    t0 = time.perf_counter()
    splits = splits_for(a.dataset, a.size, a.root, a.train, a.test, a.seed)
    raw = splits.raw if not a.raw else splits.raw.subset(list(range(min(a.raw, len(splits.raw)))))
    print(f"data {a.dataset}: {len(splits.train)} train / {len(raw)} raw / {len(splits.test)} test at {a.size} px "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)
    ctx = Context(device=torch.device(a.device), seed=a.seed, cache_dir=Path(a.cache_dir), progress=progress())
    recipe = Recipe(epochs=a.epochs, batch_size=128, crop_pad=a.crop_pad)

    jparams: dict = {"preset": a.preset, "ddpm_steps": a.ddpm_steps, "n_rounds": a.n_rounds, "t_p": a.t_p}
    if a.ddpm_channels:
        jparams["ddpm_channels"] = a.ddpm_channels
    guide = {k: v for k, v in (("lambda1", a.lambda1), ("lambda2", a.lambda2)) if v is not None}
    rows_spec = {"none": [], "jcdp": [("jcdp", {**jparams, **guide})], "jcdp-uncond": [("jcdp-uncond", jparams)]}
    wanted = a.rows.split(",")
    bad = [r for r in wanted if r not in rows_spec]
    if bad:
        ap.error(f"unknown row '{bad[0]}'; valid: {', '.join(rows_spec)}")

    t1 = time.perf_counter()
    protected = run_protect(reg.protector("emn-samplewise", emn), splits.train, ctx)
    print(f"protect emn-samplewise {time.perf_counter() - t1:.1f}s {json.dumps(protected.metrics, default=str)}",
          flush=True)
    cells = ([] if a.no_clean else [("clean", "none")]) + [("emn-samplewise", r) for r in wanted]
    rows = []
    for prot_name, label in cells:
        data = (splits.train.with_images(splits.train.images, "protected:none") if prot_name == "clean"
                else protected.data)
        spec = rows_spec[label]
        exps = [reg.exploiter(n, p) for n, p in spec]
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # show the LPIPS-backbone warning once, keep going
            purified = run_purify(exps, data, raw, ctx)
        res = run_train(a.arch, purified.data, splits.test, recipe, seed=a.seed, ctx=ctx, exploiters=exps,
                        description=f"{prot_name} x {label}")
        row = {"protector": prot_name, "exploiter": label, "params": dict(spec), "final": res.clean_acc,
               "best": res.best_acc, **purified.metrics, "purify_s": round(purified.seconds, 1),
               "train_s": round(res.seconds, 1), "wall_s": round(time.perf_counter() - t1, 1),
               "dataset": a.dataset, "train": len(splits.train), "raw": len(raw), "test": len(splits.test),
               "epochs": a.epochs, "arch": a.arch, "device": str(ctx.device)}
        rows.append(row)
        emit(row, a.out)
    print(f"\nclean test accuracy (%), {a.arch}, {len(splits.train)} train images, {a.epochs} epochs; "
          "paper: CIFAR-10, ResNet-18, full data, DDPM on the clean train split\n")
    print("| data | exploiter | ours | paper | purify s | DDPM train s | lpips backbone |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['protector']} | {r['exploiter']} | {100 * r['final']:.1f} | "
              f"{PAPER.get((r['protector'], r['exploiter']), '')} | {r['purify_s']} | "
              f"{r.get('ddpm_train_s', '')} | {r.get('lpips_backbone', '')} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
