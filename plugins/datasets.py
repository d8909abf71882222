"""Built-in data sets.

``digits`` ships inside scikit-learn, so the quick tournament and the tests need no files. The others
read a local root (``--data-root``, the tournament's ``root`` or ``$ARENA_DATA``) and download only when
the user passes ``--download``. Decoded images are cached as uint8 arrays (``$ARENA_CACHE``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arena import ArenaError, DatasetLoader, ImageSet, Param, ParamSpec, hookimpl
from arena.data import cached_decode

IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def _need_root(root: Path | None, name: str) -> Path:
    if root is None:
        raise ArenaError(f"dataset '{name}' needs a data root: pass --data-root, set 'root' in the tournament or ARENA_DATA")
    if not root.exists():
        raise ArenaError(f"dataset '{name}': data root {root} does not exist")
    return root


def load_digits(root: Path | None = None, download: bool = False, size: int = 32) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 1,797 8x8 digits, upsampled (bilinear) to ``size`` px RGB; a fixed stratified
    80/20 split (seed 0) stands in for the missing official train/test split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # N x 1 x 8 x 8 in [0,1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    gen = torch.Generator().manual_seed(0)
    test_idx = []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        test_idx.append(idx[: len(idx) // 5])
    test_idx = torch.sort(torch.cat(test_idx)).values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[test_idx] = False
    classes = [str(i) for i in range(10)]
    return (ImageSet(x[mask].clone(), y[mask].clone(), classes, "train"),
            ImageSet(x[test_idx].clone(), y[test_idx].clone(), classes, "test"))


def _torchvision_set(name: str, root: Path | None, download: bool) -> tuple[ImageSet, ImageSet]:
    import torchvision.datasets as tvd

    root = _need_root(root, name) if not download else Path(root or Path.cwd() / "data")

    def decode() -> tuple[ImageSet, ImageSet]:
        try:
            if name == "svhn":
                tr, te = tvd.SVHN(str(root), split="train", download=download), tvd.SVHN(str(root), split="test", download=download)
                xs = [torch.from_numpy(s.data) for s in (tr, te)]
                ys = [torch.as_tensor(s.labels, dtype=torch.int64) for s in (tr, te)]
                classes = [str(i) for i in range(10)]
            else:
                cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
                tr, te = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
                xs = [torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous() for s in (tr, te)]
                ys = [torch.as_tensor(s.targets, dtype=torch.int64) for s in (tr, te)]
                classes = list(tr.classes)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise ArenaError(f"dataset '{name}' at {root}: {str(e).splitlines()[0]} (pass --download to fetch it)") from None
        return ImageSet(xs[0], ys[0], classes, "train"), ImageSet(xs[1], ys[1], classes, "test")

    return cached_decode({"name": name, "root": str(Path(root).resolve())}, decode)


def _decode_file(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _scan(split_dir: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classes = classes or found
    files, labels = [], []
    for i, c in enumerate(classes):
        d = split_dir / c
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMG_EXT:
                files.append(f)
                labels.append(i)
    return files, labels, classes


def load_imagefolder(root: Path | None = None, download: bool = False, size: int = 32) -> tuple[ImageSet, ImageSet]:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val``), any image size, resized to ``size``."""
    root = _need_root(root, "imagefolder")
    train_dir = root / "train"
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise ArenaError(f"dataset 'imagefolder' at {root}: expected train/<class>/ and test/<class>/ (or val/) folders")
    stat = (train_dir.stat().st_mtime, test_dir.stat().st_mtime)

    def decode() -> tuple[ImageSet, ImageSet]:
        tr_files, tr_labels, classes = _scan(train_dir, None)
        te_files, te_labels, _ = _scan(test_dir, classes)
        if not tr_files or not te_files:
            raise ArenaError(f"dataset 'imagefolder' at {root}: no images found under train/ or test/")
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            tr = np.stack(list(pool.map(lambda p: _decode_file(p, size), tr_files, chunksize=256)))
            te = np.stack(list(pool.map(lambda p: _decode_file(p, size), te_files, chunksize=256)))
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        return (ImageSet(to_t(tr), torch.tensor(tr_labels, dtype=torch.int64), classes, "train"),
                ImageSet(to_t(te), torch.tensor(te_labels, dtype=torch.int64), classes, "test"))

    return cached_decode({"name": "imagefolder", "root": str(root.resolve()), "size": size, "stat": stat}, decode)


SIZE = Param("size", int, 32, "image side after resizing, px", low=8, high=1024)


@hookimpl
def arena_register_datasets(register) -> None:
    register(DatasetLoader("digits", load_digits, ParamSpec((SIZE,)), needs_root=False,
                           summary="scikit-learn digits, 8x8 upsampled to RGB; ships with scikit-learn"))
    for name in ("cifar10", "cifar100", "svhn"):
        register(DatasetLoader(name, lambda root=None, download=False, _n=name: _torchvision_set(_n, root, download),
                               summary=f"{name} in torchvision's format under the data root"))
    register(DatasetLoader("imagefolder", load_imagefolder, ParamSpec((SIZE,)),
                           summary="train/<class>/* + test|val/<class>/* of any image size"))
