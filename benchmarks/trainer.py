"""Victim-trainer speed: the arena trainer against a reference-style loop, side by side in one process.

(a) ``arena``: :func:`arena.train_victim`, the data as one uint8 tensor on the device, batched crop+flip
    there, channels_last + bf16 autocast on CUDA (the recipe's ``auto`` settings), no DataLoader.
(b) ``reference``: what the seed papers' scripts do: a torchvision-style ``Dataset`` that turns each
    image into a PIL image and applies ``RandomCrop(size, padding=4)`` + ``RandomHorizontalFlip`` +
    ``ToTensor``, a ``DataLoader`` with worker processes, float32 throughout, the same model, optimizer,
    learning-rate schedule, batch size and epochs.

Both train the same architecture from the same initial weights on the same images; images/second is
training throughput (evaluation excluded), and each trained model's clean test accuracy is printed so a
speed-up that costs accuracy shows. The last line is the ratio arena / reference per architecture.

    python benchmarks/trainer.py                                 # shared CIFAR-10 copy, resnet18 + cnn-small
    python benchmarks/trainer.py --data digits --epochs 15       # embedded data, an accuracy comparison
    python benchmarks/trainer.py --device cuda --train 50000     # GPU: the whole CIFAR-10 train split

The CIFAR-10 data come from ``--data-root`` / ``$ARENA_DATA`` (an ImageFolder tree such as
``../shared/datasets/cifar10-jpeg``), loaded with the arena's ``imagefolder`` loader (decoded once, cached).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from arena import ImageSet, Recipe, evaluate, make_splits, train_victim
from arena.models import build_model
from arena.precision import resolve_amp
from arena.registry import get_registry
from arena.trainer import use_channels_last


def find_cifar(root: str | None) -> Path:
    cands = [root, os.environ.get("ARENA_DATA"), Path(__file__).resolve().parents[2] / "shared" / "datasets"]
    for c in cands:
        if not c:
            continue
        p = Path(c).expanduser()
        for q in (p, p / "cifar10-jpeg"):
            if (q / "train").is_dir() and (q / "test").is_dir():
                return q
    raise SystemExit("benchmarks/trainer.py: no CIFAR-10 ImageFolder tree found; pass --data-root DIR "
                     "(train/<class>/ + test/<class>/) or use --data digits")


def load_data(args: argparse.Namespace) -> tuple[ImageSet, ImageSet]:
    reg = get_registry()
    if args.data == "digits":
        tr, te = reg.dataset("digits").load(size=args.size)
        s = make_splits(tr, te, raw_fraction=0.0, seed=0)
        return s.train, s.test
    tr, te = reg.dataset("imagefolder").load(root=find_cifar(args.data_root), size=args.size)
    s = make_splits(tr, te, train_size=min(args.train, len(tr)), test_size=min(args.test, len(te)),
                    raw_fraction=0.0, seed=0)
    return s.train, s.test


class PILDataset(torch.utils.data.Dataset):
    """The reference pipeline: HWC uint8 arrays -> PIL -> RandomCrop/Flip -> ToTensor, one image at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad: int) -> None:
        from torchvision import transforms as T

        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()  # what CIFAR10.data holds
        self.targets = labels.tolist()
        size = images.shape[-1]
        self.tf = T.Compose([T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip(), T.ToTensor()])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.data[i]
        pil = Image.fromarray(img if img.shape[2] == 3 else img[:, :, 0])
        return self.tf(pil), self.targets[i]


def train_reference(model: torch.nn.Module, train: ImageSet, recipe: Recipe, device: torch.device, workers: int,
                    seed: int) -> float:
    """The seed papers' loop; returns training seconds. Cosine schedule per step, as the arena's."""
    torch.manual_seed(seed)
    ds = PILDataset(train.images, train.labels, recipe.crop_pad)
    dl = torch.utils.data.DataLoader(ds, batch_size=recipe.batch_size, shuffle=True, num_workers=workers,
                                     pin_memory=device.type == "cuda", drop_last=False,
                                     persistent_workers=workers > 0,
                                     generator=torch.Generator().manual_seed(seed))
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    total = recipe.epochs * len(dl)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    t0 = time.perf_counter()
    for _ in range(recipe.epochs):
        for x, y in dl:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("cifar10", "digits"), default="cifar10")
    ap.add_argument("--data-root", default=None, help="CIFAR-10 ImageFolder root (else $ARENA_DATA, ../shared/datasets)")
    ap.add_argument("--size", type=int, default=32, help="image side, px")
    ap.add_argument("--train", type=int, default=2000, help="train images (cifar10)")
    ap.add_argument("--test", type=int, default=2000, help="test images (cifar10)")
    ap.add_argument("--archs", default="resnet18,cnn-small")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default: 2 on CPU, 4 on GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile in the arena trainer")
    ap.add_argument("--amp", default="auto", choices=("auto", "on", "off"), help="the arena recipe's bf16 autocast")
    ap.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"), help="the arena recipe's layout")
    ap.add_argument("--crop-pad", type=int, default=4, help="random-crop padding, px (both trainers)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 2)
    train, test = load_data(args)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, compile=args.compile, amp=args.amp,
                    channels_last=args.channels_last, crop_pad=args.crop_pad)
    chl = use_channels_last(recipe.channels_last, device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"# {dt.date.today()} {platform.node()} {dev_name}; torch {torch.__version__}; data {args.data} "
          f"{len(train)} train / {len(test)} test at {train.shape[1]} px; {args.epochs} epoch(s), batch "
          f"{args.batch_size}; reference DataLoader workers {workers}; arena bf16 {recipe.amp}, channels_last {chl}", flush=True)
    ratios = []
    for arch in args.archs.split(","):
        c, h, _ = train.shape
        results = {}
        amp = resolve_amp(recipe.amp, device, build_model(arch, train.num_classes, c, h), train.shape,
                          train.num_classes, recipe.batch_size, channels_last=chl)  # what train_victim decides
        print(f"{arch}: arena bf16 {amp}", flush=True)
        for name in ("reference", "arena"):
            model = build_model(arch, train.num_classes, c, h, seed=args.seed)
            if name == "arena":
                res = train_victim(model, train, None, recipe, seed=args.seed, device=device)
                seconds = res.seconds
            else:
                seconds = train_reference(model, train, recipe, device, workers, args.seed)
            fast = name == "arena"
            acc = evaluate(model.to(device), test.images.to(device), test.labels.to(device), amp=fast and amp,
                           channels_last=fast and chl)
            ips = args.epochs * len(train) / seconds
            results[name] = ips
            print(f"{arch:12s} {name:9s} {ips:9.1f} img/s  {seconds:8.1f} s  clean test acc {100 * acc:5.1f}%",
                  flush=True)
        ratios.append(f"{arch} {results['arena'] / results['reference']:.2f}x")
    print("arena/reference images/s: " + ", ".join(ratios))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
