"""Loaders, splits and the decode cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arena import ArenaError, ImageSet, make_splits
from arena.registry import get_registry


def _indexed_set(n: int, classes: int = 5) -> ImageSet:
    """Images whose pixels encode their index, so disjointness can be checked by value."""
    idx = torch.arange(n)
    images = torch.zeros((n, 3, 4, 4), dtype=torch.uint8)
    images[:, 0, 0, 0] = (idx % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (idx // 256).to(torch.uint8)
    return ImageSet(images, idx % classes, [str(c) for c in range(classes)], "train")


def _ids(s: ImageSet) -> set[int]:
    return set((s.images[:, 0, 0, 0].long() + 256 * s.images[:, 0, 0, 1].long()).tolist())


def test_digits_shapes_and_disjoint_default_splits(digits32) -> None:
    s = digits32
    for part in (s.train, s.raw, s.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, 32, 32)
        assert part.labels.dtype == torch.int64
    assert s.train.classes == [str(i) for i in range(10)]
    assert (s.raw.labels == -1).all(), "the raw pool is unlabeled"
    assert abs(len(s.raw) - 0.1 * (len(s.raw) + len(s.train))) <= 1
    assert len(s.test) > 300 and s.test.origin == "test" and s.train.origin == "train" and s.raw.origin == "raw"


def test_splits_are_disjoint_seeded_and_balanced() -> None:
    full = _indexed_set(1000)
    test = _indexed_set(200)
    a = make_splits(full, test, train_size=400, raw_fraction=0.2, seed=3)
    b = make_splits(full, test, train_size=400, raw_fraction=0.2, seed=3)
    c = make_splits(full, test, train_size=400, raw_fraction=0.2, seed=4)
    assert not (_ids(a.train) & _ids(a.raw))
    assert len(a.raw) == 200 and len(a.train) == 400
    assert torch.bincount(a.train.labels).tolist() == [80] * 5
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.raw.images, b.raw.images)
    assert not torch.equal(a.train.images, c.train.images)
    zero = make_splits(full, test, raw_fraction=0.0, seed=0)
    assert len(zero.raw) == 0 and len(zero.train) == 1000
    with pytest.raises(ArenaError, match="exceeds"):
        make_splits(full, test, train_size=900, raw_fraction=0.2)


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                size = (20 + 7 * i, 30 + 3 * i)
                img = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
                img.save(d / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_imagefolder_resizes_any_size_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "set")
    loader = get_registry().dataset("imagefolder")
    train, test = loader.load(root=tmp_path / "set", size=24)
    assert train.images.shape == (8, 3, 24, 24) and test.images.shape == (4, 3, 24, 24)
    assert train.classes == ["cat", "dog"] and train.labels.tolist() == [0] * 4 + [1] * 4
    assert list((tmp_path / "cache" / "datasets").iterdir()), "decoded arrays are cached"
    again, _ = loader.load(root=tmp_path / "set", size=24)
    assert torch.equal(again.images, train.images)


def test_loaders_need_a_root_and_say_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ARENA_DATA", raising=False)
    reg = get_registry()
    with pytest.raises(ArenaError, match="needs a data root"):
        reg.dataset("cifar10").load(root=None)
    with pytest.raises(ArenaError, match="--download"):
        reg.dataset("cifar10").load(root=tmp_path)
    with pytest.raises(ArenaError, match="train/<class>"):
        reg.dataset("imagefolder").load(root=tmp_path)


def test_shared_cifar10_copy_loads_when_present() -> None:
    root = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg"
    if not root.exists():
        pytest.skip("the shared CIFAR-10 copy is not beside this checkout")
    from arena_plugins.datasets import _scan

    files, labels, classes = _scan(root / "test", None)
    assert classes[0] == "airplane" and classes[-1] == "truck" and len(files) == 10000
