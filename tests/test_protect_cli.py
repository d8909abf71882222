"""`arena protect`: train and save a generator, protect a folder of mixed photos, labelled folders."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from arena.cli import main
from arena.photos import scan

CHEAP = json.dumps({"classifier": "cnn-small", "classifier_epochs": 2, "epochs": 3})


def arena_protect(*argv: str) -> int:
    """The real command line, in process: ``arena protect ARGV...``."""
    return main(["protect", *argv])


def _photos(root, labelled: bool = False) -> dict[str, bytes]:
    """PNG, JPEG and an RGBA PNG of mixed sizes (some not multiples of 4), in nested folders."""
    rng = np.random.default_rng(0)
    specs = [("a/cat.png", (40, 30), "RGB"), ("a/cat2.jpg", (64, 48), "RGB"), ("b/dog.jpeg", (17, 23), "RGB"),
             ("b/logo.png", (20, 20), "RGBA"), ("b/deep/x.png", (16, 16), "RGB")]
    if not labelled:
        specs.append(("top.png", (33, 21), "RGB"))
    out = {}
    for rel, (w, h), mode in specs:
        # smooth content plus texture, like a photo
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) * 127 / (w + h))], -1)
        arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr, "RGB")
        if mode == "RGBA":
            im.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p, quality=90) if rel.endswith(("jpg", "jpeg")) else im.save(p)
        out[rel] = p.read_bytes()
    (root / "notes.txt").write_text("not an image")
    return out


def _rgb(path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).int()


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "G.pt"
    rc = arena_protect("--with", "confoundergan", "--train-on", "digits", "--dataset-params", '{"size": 16}',
                                "--params", CHEAP, "--device", "cpu", "--save", str(path))
    assert rc == 0 and path.is_file()
    return path


@pytest.mark.parametrize("mode", ["resize", "full"])
def test_protect_folder_round_trip(generator_file, tmp_path, mode) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    before = _photos(src)
    rc = arena_protect("--with", "confoundergan", "--model", str(generator_file), "--mode", mode,
                       "--device", "cpu", str(src), str(dst))
    assert rc == 0
    for rel, data in before.items():
        assert (src / rel).read_bytes() == data, "source changed"
        with Image.open(src / rel) as a, Image.open(dst / rel) as b:
            assert a.format == b.format and a.size == b.size and a.mode == b.mode, rel
        diff = (_rgb(dst / rel) - _rgb(src / rel)).abs()
        assert int(diff.max()) <= 8, (rel, int(diff.max()))  # 8/255 budget on the decoded written file
        assert int(diff.max()) > 0, rel
    assert [str(p) for p in scan(dst)[0]] == [str(p) for p in scan(src)[0]]
    assert not (dst / "notes.txt").exists()
    assert not list(dst.rglob(".tmp-*"))


def test_protect_refuses_to_write_into_the_source(generator_file, tmp_path, capsys) -> None:
    src = tmp_path / "src"
    _photos(src)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file())).hexdigest()
    for dst in (src, src / "out", tmp_path):
        capsys.readouterr()
        assert arena_protect("--with", "confoundergan", "--model", str(generator_file), str(src), str(dst)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "destination" in err[0] and str(dst.resolve()) in err[0], err
    assert digest == hashlib.sha256(b"".join(p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file())).hexdigest()


def test_labelled_folders_for_a_protector_without_encoder(tmp_path, capsys) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    before = _photos(src, labelled=True)
    (src / "notes.txt").unlink()
    rc = arena_protect("--with", "classwise-noise", "--size", "16", str(src), str(dst))
    assert rc == 0
    for rel in before:
        assert int((_rgb(dst / rel) - _rgb(src / rel)).abs().max()) <= 8
    # a loose file outside any class folder: labels are missing -> one-line error
    _photos(tmp_path / "loose")
    capsys.readouterr()
    assert arena_protect("--with", "classwise-noise", str(tmp_path / "loose"), str(tmp_path / "o2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class folder" in err[0] and "top.png" in err[0], err


def test_cli_errors_are_one_line(generator_file, tmp_path, capsys) -> None:
    from tests.cli_runner import run_cli

    # the installed console script path: a process of its own, no traceback, exit code 2
    out = run_cli(["protect", "--with", "confoundergan", str(tmp_path), str(tmp_path / "o")])
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--model" in out.stderr
    src = tmp_path / "src"
    _photos(src)
    (tmp_path / "junk.pt").write_bytes(b"not a generator")
    (src / "a" / "broken.png").write_bytes(b"not a png")
    cases = [  # (argv, a string the one-line error must name)
        (["--model", str(tmp_path / "missing.pt"), str(src), str(tmp_path / "o1")], "missing.pt"),
        (["--model", str(tmp_path / "junk.pt"), str(src), str(tmp_path / "o2")], "junk.pt"),
        (["--model", str(generator_file), str(tmp_path / "nope"), str(tmp_path / "o3")], "nope"),
        (["--model", str(generator_file), str(src), str(tmp_path / "o4")], "broken.png"),
        (["--model", str(generator_file), "--train-on", "digits", str(src), str(tmp_path / "o5")], "--train-on"),
    ]
    for argv, named in cases:
        capsys.readouterr()
        assert arena_protect("--with", "confoundergan", *argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], (argv, err)
    assert not (tmp_path / "o4").exists() or not any((tmp_path / "o4").rglob("*.png"))
