"""Built-in data sets.

``digits`` ships inside scikit-learn, so the quick tournament and the tests need no files. The others
read a local root (``--data-root``, the tournament's ``root`` or ``$ARENA_DATA``) and download only when
the user passes ``--download``. Decoded images are cached as uint8 arrays (``$ARENA_CACHE``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arena import ArenaError, DatasetLoader, ImageSet, Param, ParamSpec, hookimpl
from arena.data import cached_decode, decode_cache_dir

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


def _decode_file(path: Path, size: int) -> np.ndarray | str:
    """The resized RGB pixels, or why PIL could not decode the file (one line). Image files come from
    anywhere, and a codec can raise almost anything on a crafted one, so every failure is a reason here
    and the caller decides whether it is fatal (the default) or skipped (``skip_bad``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"over PIL's pixel limit (Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {_first_line(e, path)}"
    except MemoryError:
        return "out of memory while decoding"
    except Exception as e:  # noqa: BLE001 - see the docstring
        return _first_line(e, path)


def _first_line(e: BaseException, path: Path) -> str:
    """The exception's first line, without the path PIL repeats (the message names it once already)."""
    lines = str(e).replace(f" {str(path)!r}", "").strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _scan(split_dir: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """Image files by extension (hidden files, such as macOS ``._x.jpg`` twins, left out), labelled by
    class folder. A class folder without images would silently become a class nobody can learn or
    score, so it is refused."""
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = classes or found
    files, labels = [], []
    for i, c in enumerate(classes):
        d = split_dir / c
        if not d.is_dir():
            continue
        mine = [f for f in sorted(d.iterdir()) if f.suffix.lower() in IMG_EXT and not f.name.startswith(".")
                and f.is_file()]
        if not mine:
            raise ArenaError(f"dataset 'imagefolder': class folder {d} holds no images "
                             f"({' '.join(sorted(IMG_EXT))}); remove it or add images")
        files += mine
        labels += [i] * len(mine)
    return files, labels, classes


def _listing_digest(root: Path, files: list[Path]) -> str:
    """Hash of every file's relative path, size and mtime: adding, removing, replacing or touching an
    image changes the decode-cache key (a folder's own mtime misses edits inside class folders)."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _decode_all(files: list[Path], size: int) -> list[np.ndarray | str]:
    from PIL import Image

    # PIL only warns between MAX_IMAGE_PIXELS and twice that; make it an error so a huge image is named
    # instead of exhausting memory. Filters are process-wide, so the pool's threads see this one.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            return list(pool.map(lambda p: _decode_file(p, size), files, chunksize=256))


def load_imagefolder(root: Path | None = None, download: bool = False, size: int = 32,
                     skip_bad: bool = False) -> tuple[ImageSet, ImageSet]:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val``), any image size, resized to ``size``.

    An image PIL cannot decode (or one over its pixel limit) stops the load with one line naming it;
    ``skip_bad`` leaves such images out instead, and every load says how many (also from the cache).
    """
    root = _need_root(root, "imagefolder")
    train_dir = root / "train"
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise ArenaError(f"dataset 'imagefolder' at {root}: expected train/<class>/ and test/<class>/ (or val/) folders")
    tr_files, tr_labels, classes = _scan(train_dir, None)
    te_files, te_labels, _ = _scan(test_dir, classes)
    if not tr_files or not te_files:
        raise ArenaError(f"dataset 'imagefolder' at {root}: no images found under train/ or test/")
    key = {"name": "imagefolder", "root": str(root.resolve()), "size": size, "skip_bad": skip_bad,
           "files": _listing_digest(root, tr_files + te_files)}
    notes = decode_cache_dir(key) / "skipped.json"

    def decode_split(files: list[Path], labels: list[int], split: str) -> tuple[ImageSet, list[str]]:
        out = _decode_all(files, size)
        bad = [f"{f}: {r}" for f, r in zip(files, out) if isinstance(r, str)]
        if bad and not skip_bad:
            raise ArenaError(f"dataset 'imagefolder': cannot decode {bad[0]}"
                             + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                             + "; fix or remove it, or pass skip_bad: true to skip undecodable images")
        keep = [i for i, r in enumerate(out) if not isinstance(r, str)]
        kept_labels = [labels[i] for i in keep]
        had, kept = Counter(labels), Counter(kept_labels)
        for c, name in enumerate(classes):
            if had[c] and not kept[c]:
                raise ArenaError(f"dataset 'imagefolder': class folder {root / split / name} holds no decodable "
                                 f"images (all {had[c]} skipped)")
        arr = np.stack([out[i] for i in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
        images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        origin = "train" if split == "train" else "test"
        return ImageSet(images, torch.tensor(kept_labels, dtype=torch.int64), classes, origin), bad

    def decode() -> tuple[ImageSet, ImageSet]:
        tr, bad_tr = decode_split(tr_files, tr_labels, "train")
        te, bad_te = decode_split(te_files, te_labels, test_dir.name)
        if not len(tr) or not len(te):
            raise ArenaError(f"dataset 'imagefolder' at {root}: no decodable images under train/ or {test_dir.name}/")
        notes.parent.mkdir(parents=True, exist_ok=True)
        notes.write_text(json.dumps(bad_tr + bad_te))
        return tr, te

    train, test = cached_decode(key, decode)
    bad = json.loads(notes.read_text()) if notes.exists() else []
    if bad:
        print(f"warning: dataset 'imagefolder' at {root}: skipped {len(bad)} undecodable image"
              f"{'s' if len(bad) != 1 else ''} (skip_bad: true), e.g. {bad[0]}", file=sys.stderr)
    return train, test


SIZE = Param("size", int, 32, "image side after resizing, px", low=8, high=1024)
SKIP_BAD = Param("skip_bad", bool, False, "skip (and count) images PIL cannot decode instead of stopping")


@hookimpl
def arena_register_datasets(register) -> None:
    register(DatasetLoader("digits", load_digits, ParamSpec((SIZE,)), needs_root=False,
                           summary="scikit-learn digits, 8x8 upsampled to RGB; ships with scikit-learn"))
    for name in ("cifar10", "cifar100", "svhn"):
        register(DatasetLoader(name, lambda root=None, download=False, _n=name: _torchvision_set(_n, root, download),
                               summary=f"{name} in torchvision's format under the data root"))
    register(DatasetLoader("imagefolder", load_imagefolder, ParamSpec((SIZE, SKIP_BAD)),
                           summary="train/<class>/* + test|val/<class>/* of any image size"))
