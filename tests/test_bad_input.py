"""Bad input gives one line naming the file, key or value, and never a wrong answer (issue 18, item 5)."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from arena.params import ArenaError, ParamError
from arena.registry import get_registry
from arena.tournament.config import ConfigError, load_config
from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "bad",
    "datasets": [{"name": "digits", "params": {"size": 16}, "train": 100, "test": 50}],
    "protectors": ["none"],
    "exploiters": ["none"],
    "architectures": ["cnn-small"],
    "recipe": {"epochs": 1},
}


def _write(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_cli(args, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_param_validator_refuses_nan_and_infinity(value: float) -> None:
    with pytest.raises(ParamError) as e:
        get_registry().protector("classwise-noise", {"eps": value})
    msg = str(e.value)
    assert "\n" not in msg and "param 'eps'" in msg and "expected a finite" in msg, msg


@pytest.mark.parametrize("change,needle", [
    ({"recipe": {"lr": ".inf"}}, "param 'lr' = inf: expected a finite"),
    ({"protectors": [{"name": "classwise-noise", "params": {"eps": ".nan"}}]}, "param 'eps' = nan"),
    ({"datasets": [{"name": "digits", "raw_fraction": ".nan"}]}, "datasets[0].raw_fraction = NaN"),
    ({"poison_ratios": [".nan"]}, "poison_ratios[0] = NaN"),
    ({"resources": {"cpus_per_trial": ".inf"}}, "resources.cpus_per_trial = Infinity"),
    ({"resources": {"timeout_s": {"train": 0}}}, "resources.timeout_s.train = 0: expected float > 0.0"),
    ({"resources": {"timeout_s": {"trian": 5}}}, "resources.timeout_s.trian = 5: expected a known key"),
])
def test_tournament_config_refuses_nan_and_infinity(tmp_path: Path, change: dict, needle: str) -> None:
    text = yaml.safe_dump({**BASE, **change}).replace("'.nan'", ".nan").replace("'.inf'", ".inf")
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "\n" not in str(e.value) and needle in str(e.value), str(e.value)


def test_relative_output_resolves_against_the_yaml_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _write(tmp_path / "grids" / "t.yaml", {**BASE, "output": "runs/x"})
    monkeypatch.chdir(tmp_path)  # another working directory: the same rows
    cfg = load_config(p.relative_to(tmp_path))
    assert cfg.output == (tmp_path / "grids" / "runs" / "x").resolve() and cfg.output.is_absolute()
    # a --output flag is the user's own path, relative to where they typed it
    assert load_config(p, output="mine").output == (tmp_path / "mine").resolve()


def test_output_naming_a_file_is_one_line_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a directory")
    p = _write(tmp_path / "t.yaml", {**BASE, "output": "out"})
    for args in ((str(p), "--output", str(a_file)), (str(p), "--output", str(a_file), "--dry-run")):
        r = _cli("tournament", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and str(a_file) in lines[0] and "expected a directory" in lines[0], r.stderr
    r = _cli("tournament", str(p), "--dry-run")
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "out").exists(), "--dry-run must not create the output directory"


def test_train_size_zero_is_one_line() -> None:
    r = _cli("train", "--train-size", "0", "--epochs", "1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--train-size 0: expected a positive number" in lines[0], r.stderr


# --- imagefolder: the decode cache, undecodable, empty and huge images -----------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries no pixel data (a decompression-bomb header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _image_folder(root: Path, n: int = 2) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _imagefolder(root: Path, **params):
    opts = get_registry().dataset("imagefolder").params.validate(params, owner="dataset 'imagefolder'")
    return get_registry().dataset("imagefolder").load(root=root, **opts)


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_imagefolder_cache_sees_images_added_to_and_removed_from_a_class_folder(tmp_path: Path, fresh_cache) -> None:
    import os

    from PIL import Image

    root = _image_folder(tmp_path / "set")
    train, _ = _imagefolder(root, size=8)
    assert len(train) == 4
    # a new image in an existing class folder: the folder train/ itself keeps its mtime
    t = (root / "train").stat().st_mtime_ns
    Image.new("RGB", (9, 9), (1, 2, 3)).save(root / "train" / "cat" / "new.png")
    os.utime(root / "train", ns=(t, t))
    train, _ = _imagefolder(root, size=8)
    assert len(train) == 5 and train.labels.tolist().count(0) == 3
    (root / "train" / "dog" / "0.png").unlink()
    os.utime(root / "train", ns=(t, t))
    train, _ = _imagefolder(root, size=8)
    assert len(train) == 4 and train.labels.tolist().count(1) == 1
    # a file replaced by one of the same name: the size/mtime change is seen too
    Image.new("RGB", (30, 30), (200, 0, 0)).save(root / "train" / "cat" / "new.png")
    os.utime(root / "train" / "cat" / "new.png", ns=(t + 10**9, t + 10**9))
    train, _ = _imagefolder(root, size=8)
    assert int(train.images[train.labels == 0][-1][0].float().mean()) == 200


def test_imagefolder_names_an_undecodable_image_or_skips_and_counts_it(tmp_path: Path, fresh_cache, capsys) -> None:
    root = _image_folder(tmp_path / "set")
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ArenaError) as e:
        _imagefolder(root, size=8)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "cannot identify image file" in msg and "skip_bad" in msg, msg
    capsys.readouterr()
    train, test = _imagefolder(root, size=8, skip_bad=True)
    assert len(train) == 4 and len(test) == 4  # the bad file is left out, the good ones kept
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 1 undecodable image" in err[0] and str(bad) in err[0], err
    _imagefolder(root, size=8, skip_bad=True)  # from the cache: still said
    assert "skipped 1 undecodable image" in capsys.readouterr().err
    # a truncated PNG is named too, with PIL's reason
    bad.unlink()
    good = (root / "test" / "cat" / "0.png").read_bytes()
    (root / "test" / "cat" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ArenaError) as e:
        _imagefolder(root, size=8, skip_bad=False)
    assert "\n" not in str(e.value) and "cut.png: OSError" in str(e.value), str(e.value)


def test_imagefolder_refuses_an_empty_class_folder(tmp_path: Path, fresh_cache) -> None:
    root = _image_folder(tmp_path / "set")
    (root / "train" / "bird").mkdir()
    (root / "train" / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(ArenaError) as e:
        _imagefolder(root, size=8)
    msg = str(e.value)
    assert "\n" not in msg and str(root / "train" / "bird") in msg and "holds no images" in msg, msg
    # a class whose only images are all undecodable is refused even with skip_bad
    (root / "train" / "bird" / "x.png").write_bytes(b"")
    with pytest.raises(ArenaError, match=r"train/bird holds no decodable images \(all 1 skipped\)"):
        _imagefolder(root, size=8, skip_bad=True)


@pytest.mark.parametrize("side", [100_000, 10_000])  # over 2x the limit (PIL's error) and just over it (a warning)
def test_imagefolder_names_an_image_over_the_pixel_limit(tmp_path: Path, fresh_cache, side: int) -> None:
    root = _image_folder(tmp_path / "set")
    huge = root / "test" / "dog" / "bomb.png"
    huge.write_bytes(png_header(side, side))
    with pytest.raises(ArenaError) as e:
        _imagefolder(root, size=8)
    msg = str(e.value)
    assert "\n" not in msg and str(huge) in msg and "pixel limit" in msg, msg
    _, test = _imagefolder(root, size=8, skip_bad=True)
    assert len(test) == 4


# --- Ray address -------------------------------------------------------------------------------------------

def _no_ray_cluster_here() -> bool:
    from ray._private.services import find_bootstrap_address, find_gcs_addresses

    return not find_gcs_addresses() and find_bootstrap_address(None) is None


@pytest.mark.xdist_group("ray")  # "auto" must not find the embedded Ray of another test
@pytest.mark.parametrize("address,needle", [
    ("127.0.0.1:1", "--address 127.0.0.1:1: no Ray cluster reachable at 127.0.0.1:1 (Connection refused)"),
    ("auto", "--address auto: no running Ray cluster found on this machine"),
    ("nonsense", "--address 'nonsense': expected HOST:PORT"),
])
def test_unreachable_or_absent_ray_address_is_one_line_within_seconds(tmp_path: Path, address: str,
                                                                      needle: str) -> None:
    import time

    if address == "auto" and not _no_ray_cluster_here():
        pytest.skip("a Ray instance is running on this machine, so 'auto' finds one")
    p = _write(tmp_path / "t.yaml", {**BASE, "output": "out"})
    t0 = time.monotonic()
    r = _cli("tournament", str(p), "--address", address, "--no-live")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert time.monotonic() - t0 < 30, "refused only after Ray's retries"
