"""ConfounderGAN at a CPU-affordable size: CIFAR-10 subset (imagefolder, 32 px), cnn-small classifier and victim.

    python benchmarks/confoundergan.py --train-size 1000 --test-size 1000 --params '{"gan_weight": 0.0}'

Prints one JSON line: victim clean-test accuracy on clean vs protected data, image quality, and the
budget of encoding the raw pool (images G never saw).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import progress

from arena import Context, Recipe, check_budget, make_splits, train_victim
from arena.data import resolve_root
from arena.metrics import psnr, ssim
from arena.registry import get_registry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="/work/shared/datasets/cifar10-jpeg")
    ap.add_argument("--train-size", type=int, default=1000)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--victim-epochs", type=int, default=15)
    ap.add_argument("--params", default="{}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a few-second smoke run (200 images, 1-2 epochs)")
    a = ap.parse_args()
    quick = {"classifier_epochs": 1, "epochs": 1} if a.quick else {}
    if a.quick:
        a.train_size, a.test_size, a.victim_epochs = 200, 200, 1
    torch.set_num_threads(a.threads)
    reg = get_registry()
    tr, te = reg.dataset("imagefolder").load(root=resolve_root(a.data_root, "imagefolder"), size=32)
    s = make_splits(tr, te, train_size=a.train_size, test_size=a.test_size, seed=0)
    params = {"classifier": "cnn-small", "classifier_epochs": 8, "epochs": 15, **json.loads(a.params), **quick}
    prot = reg.protector("confoundergan", params)
    ctx = Context(seed=0, recipe=Recipe(epochs=params["classifier_epochs"]), progress=progress())
    t0 = time.perf_counter()
    enc = prot.fit(s.train, ctx)
    fit_s = time.perf_counter() - t0
    p_img = enc.encode(s.train.images)
    m = check_budget(prot.budget(s.train), s.train.images, p_img, "confoundergan")
    pool = s.raw.images[: 200 if a.quick else 2000]
    raw = check_budget(enc.budget, pool, enc.encode(pool), "encoder on raw pool")
    out = {"machine": "2-core CPU, no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
           "params": params, "train": len(s.train), "test": len(s.test), "fit_s": round(fit_s, 1),
           "linf_255": round(m["linf"] * 255), "raw_linf_255": round(raw["linf"] * 255),
           "psnr": round(psnr(s.train.images, p_img), 2), "ssim": round(ssim(s.train.images, p_img), 4)}
    print(json.dumps(out), flush=True)
    for name, imgs in (("clean", s.train.images), ("protected", p_img)):
        model = ctx.build_model("cnn-small", s.train, seed=0)
        r = train_victim(model, s.train.with_images(imgs, name), s.test, Recipe(epochs=a.victim_epochs), seed=0)
        out[f"{name}_acc"], out[f"{name}_best"], out[f"{name}_train_acc"] = r.clean_acc, r.best_acc, r.train_acc
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
