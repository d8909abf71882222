"""Property test (issue 18, item 7): whatever files an imagefolder holds, loading it gives valid images or
one line naming the problem, never another exception."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arena.params import ArenaError
from arena.registry import get_registry

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

SIZE = 8


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries no pixel data (a decompression-bomb header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _encoded(fmt: str, w: int, h: int, mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    if fmt == "JPEG" and mode == "RGBA":
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def a_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """One file as (name, bytes): a valid image, or one of the ways real folders go wrong."""
    kind = draw(st.sampled_from(["valid", "valid", "truncated", "empty", "wrong_ext", "huge", "garbage", "not_image"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG"]))
    ext = {"PNG": ".png", "JPEG": ".jpg"}[fmt]
    data = _encoded(fmt, draw(st.integers(1, 24)), draw(st.integers(1, 24)), draw(st.sampled_from(["RGB", "L", "RGBA"])),
                    draw(st.integers(0, 2**16)))
    if kind == "truncated":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "empty":
        data = b""
    elif kind == "wrong_ext":
        ext = ".jpg" if ext == ".png" else ".png"  # decodable: PIL reads the content, not the name
    elif kind == "huge":
        data = png_header(draw(st.sampled_from([100_000, 10_000, 65_535])), draw(st.integers(9_000, 100_000)))
    elif kind == "garbage":
        data = draw(st.binary(min_size=1, max_size=64))
    elif kind == "not_image":
        ext = ".txt"
    return ext, data


@st.composite
def a_tree(draw: st.DrawFn) -> dict[str, bytes]:
    files = {}
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i, (ext, data) in enumerate(draw(st.lists(a_file(), min_size=0, max_size=3))):
                files[f"{split}/{cls}/{i}{ext}"] = data
    return files


@hypothesis.settings(max_examples=50, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(tree=a_tree(), skip_bad=st.booleans())
def test_imagefolder_loads_valid_images_or_says_one_line(tree: dict[str, bytes], skip_bad: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="arena-prop-"))
    try:
        monkeypatch.setenv("ARENA_CACHE", str(tmp / "cache"))
        root = tmp / "set"
        for rel, data in tree.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        for split in ("train", "test"):
            (root / split).mkdir(parents=True, exist_ok=True)
        loader = get_registry().dataset("imagefolder")
        try:
            train, test = loader.load(root=root, size=SIZE, skip_bad=skip_bad)
        except ArenaError as e:
            assert "\n" not in str(e) and str(e).strip(), repr(str(e))
            return
        for split in (train, test):
            assert split.images.dtype.is_floating_point is False and str(split.images.dtype) == "torch.uint8"
            assert split.images.shape[1:] == (3, SIZE, SIZE) and len(split) > 0
            assert len(split.labels) == len(split) and set(split.labels.tolist()) <= set(range(len(train.classes)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
