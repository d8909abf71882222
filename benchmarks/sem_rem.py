"""SEM/REM against a standard and an adversarially trained victim (the SEM paper's headline setting).

``benchmarks/protectors.py`` covers a standard victim only; SEM's claim is about victims that train
adversarially at the radius rho_a the noise was made for, so this script trains each victim twice:
plainly, and with the ``adversarial-training`` exploiter at ``eps = rho_a`` (when that plugin is
registered). Clean data ("none") goes through the same two victims as the reference. Prints one
``RESULT {json}`` line per (protector, victim) cell and a table beside the SEM paper's numbers.

A CPU-sized run (cnn-small victim and surrogate, 1,000 CIFAR-10 images, 300 surrogate steps)::

    python benchmarks/sem_rem.py --protectors sem,rem --train 1000 --test 500 --epochs 10 --adv-steps 2 \\
        --params '{"surrogate": "cnn-small", "train_steps": 300, "lr_decay_every": 120}'

``--quick`` runs in seconds on digits (16 px, tiny params) to check the script, and measures nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import torch
from common import progress

from arena import Context, Recipe, make_splits, train_victim
from arena.models import build_model
from arena.registry import get_registry
from arena.stages import run_protect

# SEM paper, CIFAR-10, ResNet-18, victim adversarially trained at rho_a (0 = standard training).
PAPER = {  # rho_a in 1/255 -> test accuracy %
    "none": {0: 94.7, 1: 93.7, 2: 92.4, 3: 90.9, 4: 89.5},
    "sem": {0: 13.0, 1: 12.2, 2: 11.5, 3: 20.9, 4: 31.9},
    "rem": {0: 15.2, 1: 14.3, 2: 25.4, 3: 30.9, 4: 48.2},
    "emn-samplewise": {0: 13.2, 1: 22.1, 2: 71.4, 3: 87.7, 4: 88.6},
}
QUICK = {"surrogate": "cnn-small", "train_steps": 3, "batch_size": 32, "samples": 1, "def_steps": 2,
         "atk_steps": 1, "aug_pad": 2}


def paper(name: str, rho_255: float) -> str:
    col = PAPER.get(name, {})
    r = round(rho_255)
    return f"{col[r]:.1f}" if r in col and abs(r - rho_255) < 1e-6 else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protectors", default="sem,rem", help="comma-separated: sem, rem")
    ap.add_argument("--params", default="{}", help="params (JSON) given to every protector named")
    ap.add_argument("--dataset", default="imagefolder")
    ap.add_argument("--root", default="/work/shared/datasets/cifar10-jpeg")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--arch", default="cnn-small", help="victim architecture")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--adv-epochs", type=int, default=None, help="epochs of the adversarially trained victim")
    ap.add_argument("--adv-steps", type=int, default=10, help="PGD steps of the adversarially trained victim")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default=None, help="protector cache (reruns are free); default: a temp dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run on digits 16 px with tiny params")
    a = ap.parse_args()
    if a.quick:
        a.dataset, a.size, a.train, a.test, a.epochs, a.adv_steps = "digits", 16, 200, 100, 2, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    reg = get_registry()
    given = {**(QUICK if a.quick else {}), **json.loads(a.params)}
    names = [n.strip() for n in a.protectors.split(",") if n.strip()]
    prots = {n: reg.protector(n, given) for n in names}  # bad params fail here, before any compute
    ds = reg.dataset(a.dataset)
    tr, te = ds.load(size=a.size, **({"root": Path(a.root)} if ds.needs_root else {}))
    s = make_splits(tr, te, train_size=a.train, test_size=a.test, seed=a.seed)
    dev = torch.device(a.device)
    ctx = Context(device=dev, seed=a.seed, cache_dir=Path(a.cache_dir) if a.cache_dir else None, progress=progress())
    protected, protect_s, rho = {"none": s.train}, {"none": 0.0}, {}
    for n, prot in prots.items():
        t = time.perf_counter()
        out = run_protect(prot, s.train, ctx)  # checks the budget after uint8 quantization
        protected[n], protect_s[n], rho[n] = out.data, time.perf_counter() - t, prot.p["rho_a"]
        print(f"{n}: protect {protect_s[n]:.0f}s, L-inf {out.metrics['noise_linf'] * 255:.0f}/255, "
              f"PSNR {out.metrics.get('psnr', float('nan')):.1f}", flush=True)
    rho_a = max(rho.values()) if rho else 4 / 255
    victims: list[tuple[str, float, dict | None]] = [("standard", 0.0, None)]
    if "adversarial-training" in reg.names("exploiters"):
        victims.append(("adversarial", rho_a, {"eps": rho_a, "steps": a.adv_steps,
                                               "step_size": 2 * rho_a / a.adv_steps,  # 10 x 0.8/255 at 4/255
                                               "eval_steps": 0}))
    rows = []
    for vname, vrho, ex_params in victims:
        for pname in protected:
            mods = []
            recipe = Recipe(epochs=a.epochs, batch_size=128)
            if ex_params is not None:
                mods = [reg.exploiter("adversarial-training", ex_params).training_mod(ctx)]
                recipe = Recipe(epochs=a.adv_epochs or a.epochs, batch_size=128)
            model = build_model(a.arch, s.train.num_classes, s.train.shape[0], a.size, seed=a.seed)
            res = train_victim(model, protected[pname], s.test, recipe, seed=a.seed, device=dev, mods=mods)
            row = {"protector": pname, "victim": vname, "victim_rho_255": round(vrho * 255, 2),
                   "clean_acc": round(res.clean_acc, 4), "best_acc": round(res.best_acc, 4),
                   "paper": paper(pname, vrho * 255), "train_s": round(res.seconds, 1),
                   "protect_s": round(protect_s[pname], 1), "params": prots[pname].p if pname in prots else {},
                   "info": getattr(prots.get(pname), "last_info", {}),
                   "arch": a.arch, "train": len(s.train), "test": len(s.test), "dataset": a.dataset,
                   "device": a.device if a.device != "cpu" else f"cpu ({torch.get_num_threads()} threads, "
                                                              f"{platform.machine()})",
                   "date": dt.date.today().isoformat()}
            rows.append(row)
            print("RESULT " + json.dumps(row, default=str), flush=True)
    print(f"\n{a.dataset} {a.size}px, {len(s.train)} train / {len(s.test)} test, victim {a.arch}")
    print("| protector | victim | clean acc % (final / best) | SEM paper % | protect s | train s |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['protector']} | {r['victim']} {r['victim_rho_255']:g}/255 | {100 * r['clean_acc']:.1f} / "
              f"{100 * r['best_acc']:.1f} | {r['paper']} | {r['protect_s']:.0f} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
