"""`arena protect` on bad or sensitive input (issue 18, item 5): existing files, grayscale photos,
identifying metadata, undecodable and huge images, a --model that is not a generator."""

from __future__ import annotations

import hashlib
import pickle
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from arena.cli import main

GPS, MAKE, MODEL, ORIENTATION, GPS_IFD = 0x8825, 0x010F, 0x0110, 0x0112, 0x8825


def protect(*argv: str) -> int:
    return main(["protect", *argv])


def classwise(src: Path, dst: Path, *flags: str) -> int:
    """A protector without encoder: cheap, and labels come from SRC/<class>/ folders."""
    return protect("--with", "classwise-noise", "--size", "16", *flags, str(src), str(dst))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _photo(path: Path, mode: str = "RGB", size: tuple[int, int] = (24, 18), seed: int = 0, **save) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(40, 216, (h, w) if mode == "L" else (h, w, len(mode)), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, **save)
    return path


def _labelled(src: Path) -> Path:
    for i, rel in enumerate(["a/1.png", "a/2.jpg", "b/3.png", "b/4.png"]):
        _photo(src / rel, seed=i)
    return src


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.relative_to(folder).as_posix().encode() + p.read_bytes()
                                   for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries no pixel data (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


# --- existing files --------------------------------------------------------------------------------------

def test_existing_destination_file_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    src, dst = _labelled(tmp_path / "src"), tmp_path / "dst"
    (dst / "b").mkdir(parents=True)
    (dst / "b" / "4.png").write_bytes(b"my own photo, not a copy")  # the last file in order
    before = _digest(dst)
    assert classwise(src, dst) == 2
    line = _one_line(capsys)
    assert str(dst.resolve() / "b" / "4.png") in line and "already exists" in line and "--overwrite" in line, line
    assert _digest(dst) == before, "a refused run wrote into DST"
    assert classwise(src, dst, "--overwrite") == 0
    with Image.open(dst / "b" / "4.png") as im:
        assert im.size == (24, 18)
    # a second run into the same folder: every file exists now
    capsys.readouterr()
    assert classwise(src, dst) == 2
    assert "(and 3 more)" in _one_line(capsys)


def test_save_refuses_an_existing_model_file_before_training(tmp_path: Path, capsys) -> None:
    model = tmp_path / "G.pt"
    model.write_bytes(b"an older generator")
    args = ["--with", "confoundergan", "--train-on", "digits", "--dataset-params", '{"size": 16}', "--device", "cpu",
            "--params", '{"classifier": "cnn-small", "classifier_epochs": 1, "epochs": 1}']
    assert protect(*args, "--save", str(model)) == 2
    line = _one_line(capsys)
    assert f"--save {model}" in line and "already exists" in line and "--overwrite" in line, line
    assert model.read_bytes() == b"an older generator"
    # a taken DST file is refused before the generator is trained or saved
    src, dst = _labelled(tmp_path / "src"), tmp_path / "dst"
    _photo(dst / "a" / "1.png")
    assert protect(*args, "--save", str(tmp_path / "new.pt"), str(src), str(dst)) == 2
    assert "already exists" in _one_line(capsys) and not (tmp_path / "new.pt").exists()


# --- grayscale -------------------------------------------------------------------------------------------

def test_grayscale_photos_stay_grayscale(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _photo(src / "a" / "grey.png", "L")
    _photo(src / "a" / "grey.jpg", "L", seed=1, quality=95)
    _photo(src / "b" / "grey-alpha.png", "LA", seed=2)
    _photo(src / "b" / "colour.png", seed=3)
    assert classwise(src, dst) == 0
    for rel, mode in (("a/grey.png", "L"), ("a/grey.jpg", "L"), ("b/grey-alpha.png", "LA"), ("b/colour.png", "RGB")):
        with Image.open(src / rel) as a, Image.open(dst / rel) as b:
            assert b.mode == mode and b.size == a.size, (rel, b.mode)
            diff = np.abs(np.asarray(b, dtype=np.int16) - np.asarray(a, dtype=np.int16))
            if mode == "LA":
                assert (diff[..., 1] == 0).all(), "alpha changed"
                diff = diff[..., 0]
            assert 0 < diff.max() <= 8, (rel, diff.max())


# --- metadata --------------------------------------------------------------------------------------------

def _exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = "PhoneMaker", "Pocket 12"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)})
    if orientation:
        exif[ORIENTATION] = orientation
    return exif


def _labelled_with_metadata(src: Path) -> None:
    _photo(src / "a" / "gps.jpg", exif=_exif().tobytes(), quality=95)
    _photo(src / "a" / "turned.jpg", seed=1, exif=_exif(orientation=6).tobytes(), quality=95)
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Jane Doe")
    text.add_text("Location", "Home")
    _photo(src / "b" / "text.png", seed=2, pnginfo=text)
    _photo(src / "b" / "plain.png", seed=3)


def test_identifying_metadata_is_stripped_unless_kept(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    _labelled_with_metadata(src)
    assert classwise(src, tmp_path / "out") == 0
    said = _flat(capsys.readouterr().out)
    assert "identifying metadata" in said and "stripped from 3 of 4 files" in said, said
    for rel in ("a/gps.jpg", "a/turned.jpg", "b/text.png"):
        with Image.open(tmp_path / "out" / rel) as im:
            exif = im.getexif()
            assert MAKE not in exif and MODEL not in exif and not exif.get_ifd(GPS_IFD), rel
            assert "Author" not in im.info and "Location" not in im.info, rel
    with Image.open(tmp_path / "out" / "a" / "turned.jpg") as im:
        assert im.getexif().get(ORIENTATION) == 6, "the orientation tag is kept, or the photo displays sideways"

    assert classwise(src, tmp_path / "kept", "--keep-metadata") == 0
    assert "metadata kept (--keep-metadata)" in _flat(capsys.readouterr().out)
    with Image.open(tmp_path / "kept" / "a" / "gps.jpg") as im:
        exif = im.getexif()
        assert exif[MAKE] == "PhoneMaker" and exif.get_ifd(GPS_IFD)[1] == "N"
    with Image.open(tmp_path / "kept" / "b" / "text.png") as im:
        assert im.info["Author"] == "Jane Doe" and im.info["Location"] == "Home"


# --- undecodable and huge images -------------------------------------------------------------------------

@pytest.mark.parametrize("name,data,needle", [
    ("broken.png", b"not a png at all", "cannot identify image file"),
    ("bomb.png", png_header(100_000, 100_000), "over PIL's pixel limit"),
    ("big.png", png_header(10_000, 10_000), "over PIL's pixel limit"),  # PIL only warns here
], ids=["undecodable", "over-2x-pixel-limit", "just-over-pixel-limit"])
def test_undecodable_or_huge_image_is_named_or_skipped(tmp_path: Path, capsys, name: str, data: bytes,
                                                       needle: str) -> None:
    src = _labelled(tmp_path / "src")
    (src / "a" / name).write_bytes(data)
    assert classwise(src, tmp_path / "o1") == 2
    line = _one_line(capsys)
    assert str(src.resolve() / "a" / name) in line and needle in line and "--skip-bad" in line, line
    assert not (tmp_path / "o1").exists()

    assert classwise(src, tmp_path / "o2", "--skip-bad") == 0
    said = _flat(capsys.readouterr().out)
    assert "1 undecodable images skipped" in said and f"a/{name}: " in said and needle in said, said
    assert sorted(p.name for p in (tmp_path / "o2").rglob("*.*")) == ["1.png", "2.jpg", "3.png", "4.png"]


# --- --model that is not a generator ---------------------------------------------------------------------

@pytest.mark.parametrize("content", ["text", "empty", "pickle", "torch-module", "torch-dict"])
def test_model_that_is_not_a_generator_is_one_line(tmp_path: Path, capsys, content: str) -> None:
    model = tmp_path / "model.pt"
    if content == "text":
        model.write_text("hello")
    elif content == "empty":
        model.write_bytes(b"")
    elif content == "pickle":
        model.write_bytes(pickle.dumps({"a": {1, 2}}))
    elif content == "torch-module":
        torch.save(torch.nn.Linear(2, 2), model)
    else:
        torch.save({"format": "something else", "w": torch.zeros(2)}, model)
    src = _labelled(tmp_path / "src")
    assert protect("--with", "confoundergan", "--model", str(model), "--device", "cpu", str(src),
                   str(tmp_path / "out")) == 2
    line = _one_line(capsys)
    assert str(model) in line and "is not a saved ConfounderGAN generator" in line, line
    assert "weights_only" not in line and "torch.load" not in line, line
