"""Bad input gives one line naming the file, key or value, and never a wrong answer (issue 18, item 5)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from arena.params import ParamError
from arena.registry import get_registry
from arena.tournament.config import ConfigError, load_config

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
    return subprocess.run([sys.executable, "-m", "arena.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


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
