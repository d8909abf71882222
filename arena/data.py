"""The one in-memory image-set type, the threat-model splits, and the decoded-array cache.

Images live as one uint8 tensor (N x C x H x W) because that is what gets protected, budget-checked,
stored and moved to the device in one piece; floats are made per batch on the device.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .params import ArenaError, ParamSpec


@dataclass
class ImageSet:
    """A labeled image set. ``origin`` records which split it came from so the arena can prove which
    data a plugin received (``train``, ``raw``, ``test``, ``protected:<name>``, ``purified:<name>``)."""

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N (-1 where the labels are withheld: the raw pool)
    classes: list[str]
    origin: str = "train"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ArenaError(
                f"ImageSet({self.origin}): images must be a uint8 N x C x H x W tensor, got "
                f"{self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ArenaError(
                f"ImageSet({self.origin}): labels must be int64 of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: torch.Tensor | np.ndarray | list[int], origin: str | None = None) -> ImageSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], list(self.classes), origin or self.origin)

    def with_images(self, images: torch.Tensor, origin: str) -> ImageSet:
        """Same labels and classes, new pixels: how protectors and exploiters return their output."""
        return replace(self, images=images, origin=origin)

    def floats(self, device: torch.device | str | None = None) -> torch.Tensor:
        x = self.images if device is None else self.images.to(device)
        return x.float().div_(255.0)

    def fingerprint(self) -> str:
        """Content hash used in cache keys: equal pixels and labels give equal keys."""
        h = hashlib.sha256()
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        h.update(json.dumps(self.classes).encode())
        return h.hexdigest()[:16]

    def save(self, path: Path) -> None:
        """Atomic save (temp file + rename) so an interrupted run never leaves a readable half-file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        with open(tmp, "wb") as f:
            np.savez(f, images=self.images.numpy(), labels=self.labels.numpy(),
                     classes=np.array(self.classes, dtype=object), origin=np.array(self.origin))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ImageSet:
        with np.load(path, allow_pickle=True) as z:
            return cls(torch.from_numpy(z["images"].copy()), torch.from_numpy(z["labels"].copy()),
                       [str(c) for c in z["classes"]], str(z["origin"]))


@dataclass
class Splits:
    """The three disjoint splits of the threat model. ``test`` never reaches a plugin."""

    train: ImageSet
    raw: ImageSet
    test: ImageSet
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetLoader:
    """A registered data set: ``load(root, download, **params) -> (train, test)`` full original splits."""

    name: str
    load: Callable[..., tuple[ImageSet, ImageSet]]
    params: ParamSpec = field(default_factory=ParamSpec)
    needs_root: bool = True
    summary: str = ""


def cache_root() -> Path:
    return Path(os.environ.get("ARENA_CACHE", Path.home() / ".cache" / "unlearnable-arena"))


def balanced_indices(labels: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n indices, as equal per class as the data allow, drawn with a seeded generator (sorted)."""
    classes = torch.unique(labels)
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [p[torch.randperm(len(p), generator=gen)] for p in per_class]
    k = len(per_class)
    quota = [n // k + (1 if i < n % k else 0) for i in range(k)]
    # Redistribute quota of classes that are too small.
    short = sum(max(0, q - len(p)) for q, p in zip(quota, per_class))
    quota = [min(q, len(p)) for q, p in zip(quota, per_class)]
    while short > 0:
        moved = False
        for i, p in enumerate(per_class):
            if short and quota[i] < len(p):
                quota[i] += 1
                short -= 1
                moved = True
        if not moved:
            break
    picked = torch.cat([p[:q] for p, q in zip(per_class, quota)])
    return torch.sort(picked).values


def make_splits(
    train_full: ImageSet,
    test_full: ImageSet,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    raw_fraction: float = 0.1,
    seed: int = 0,
) -> Splits:
    """Carve the threat-model splits from a data set's original train/test.

    The raw pool is ``raw_fraction`` of the original train split, taken first, so it is disjoint from
    the train split however large the train subset is; train is then a class-balanced subset of the rest.
    """
    if not 0.0 <= raw_fraction < 1.0:
        raise ArenaError(f"raw_fraction = {raw_fraction!r}: expected a float in [0, 1)")
    for what, size in (("train", train_size), ("test", test_size)):
        if size is not None and size < 1:
            raise ArenaError(f"{what} size {size}: expected a positive number of images")
    gen = torch.Generator().manual_seed(seed)
    n = len(train_full)
    n_raw = int(round(raw_fraction * n))
    perm = torch.randperm(n, generator=gen)
    raw_idx = torch.sort(perm[:n_raw]).values
    rest_idx = torch.sort(perm[n_raw:]).values
    rest = train_full.subset(rest_idx)
    if train_size is not None:
        if train_size > len(rest):
            raise ArenaError(f"train size {train_size} exceeds the {len(rest)} images left after the raw pool")
        train_idx = balanced_indices(rest.labels, train_size, gen)
        train = rest.subset(train_idx, origin="train")
    else:
        train = replace(rest, origin="train")
    raw = train_full.subset(raw_idx, origin="raw")
    raw = replace(raw, labels=torch.full_like(raw.labels, -1))  # the pool is unlabeled
    test = test_full
    if test_size is not None and test_size < len(test_full):
        test = test_full.subset(balanced_indices(test_full.labels, test_size, gen))
    test = replace(test, origin="test")
    info = {"train": len(train), "raw": len(raw), "test": len(test), "seed": seed, "raw_fraction": raw_fraction}
    return Splits(train=train, raw=raw, test=test, info=info)


def decode_cache_dir(key: dict[str, Any]) -> Path:
    """Where ``cached_decode`` keeps the arrays for ``key``; a loader may keep its own notes beside them
    (e.g. which files it skipped) so a cache hit can report what the first decode found."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root() / "datasets" / f"{key.get('name', 'data')}-{digest}"


def cached_decode(key: dict[str, Any], decode: Callable[[], tuple[ImageSet, ImageSet]]) -> tuple[ImageSet, ImageSet]:
    """Decode once, then reload uint8 arrays: decoding 60k JPEGs takes a minute, loading arrays a second."""
    d = decode_cache_dir(key)
    tr, te = d / "train.npz", d / "test.npz"
    if tr.exists() and te.exists():
        return ImageSet.load(tr), ImageSet.load(te)
    train, test = decode()
    train.save(tr)
    test.save(te)
    return train, test


def resolve_root(root: str | os.PathLike | None, dataset: str) -> Path | None:
    """Where a data set lives: the explicit root, else ``$ARENA_DATA`` (optionally with a subfolder per set)."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("ARENA_DATA")
    if not env:
        return None
    base = Path(env).expanduser()
    return base / dataset if (base / dataset).exists() else base
