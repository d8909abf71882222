"""``amp: auto`` by measurement: the decision, its per-machine cache, and the keys and rows that carry it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from arena.models import build_model
from arena.precision import cache_file, resolve_amp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "cache"))
    return cache_file()


def _tiny() -> torch.nn.Module:
    return build_model("cnn-small", 10, 1, 16, seed=0)


def test_on_and_off_are_honoured_without_measuring(cache: Path) -> None:
    assert resolve_amp("on", "cpu", _tiny(), (1, 16, 16), 10, 64) is True
    assert resolve_amp("off", "cpu", _tiny(), (1, 16, 16), 10, 64) is False
    assert resolve_amp("auto", "cuda", _tiny(), (1, 16, 16), 10, 64) is True, "CUDA: bf16 without measuring"
    assert not cache.exists()


def test_auto_on_cpu_is_measured_once_and_cached(cache: Path) -> None:
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    on = resolve_amp("auto", "cpu", model, (1, 16, 16), 10, 64, threads=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "measured on a copy"
    entries = json.loads(cache.read_text())
    assert len(entries) == 1
    (key, entry), = entries.items()
    assert "CNNSmall" in key and "1 threads" in key and torch.__version__ in key and "1x16x16" in key
    assert entry["bf16"] is on and entry["fp32_img_s"] > 0 and entry["bf16_img_s"] > 0
    # A second call reads the file: flip the stored verdict and the resolver follows it, without measuring.
    entries[key]["bf16"] = not on
    cache.write_text(json.dumps(entries))
    assert resolve_amp("auto", "cpu", _tiny(), (1, 16, 16), 10, 64, threads=1) is (not on)
    assert json.loads(cache.read_text()) == entries, "nothing was measured or rewritten"
    # Another shape is another measurement, added beside the first.
    resolve_amp("auto", "cpu", build_model("cnn-small", 10, 1, 8, seed=0), (1, 8, 8), 10, 64, threads=1)
    assert len(json.loads(cache.read_text())) == 2


def test_train_victim_resolves_auto_with_the_same_cache(cache: Path, digits16) -> None:
    from arena.trainer import Recipe, train_victim

    train = digits16.train.subset(torch.arange(64), origin="train")
    c, h, _ = train.shape
    train_victim(build_model("cnn-small", 10, c, h, seed=0), train, None, Recipe(epochs=1, batch_size=32), seed=0)
    assert any("CNNSmall" in k and "batch 32" in k for k in json.loads(cache.read_text()))


def test_cell_keys_and_rows_carry_the_resolved_precision(cache: Path, tmp_path: Path) -> None:
    from arena.registry import get_registry
    from arena.tournament.config import load_config
    from arena.tournament.grid import expand, resolve_precision
    from arena.tournament.runner import prepare_data
    from arena.tournament.stagecache import StageCache

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({
        "name": "p", "datasets": [{"name": "digits", "params": {"size": 16}, "train": 100, "test": 50}],
        "protectors": ["none"], "exploiters": ["none"], "architectures": ["cnn-small"],
        "recipe": {"epochs": 1, "batch_size": 64}, "seeds": [0], "resources": {"cpus_per_trial": 1},
        "output": str(tmp_path / "out")}))
    cfg = load_config(path)
    sc = StageCache(tmp_path / "c")
    keys = prepare_data(cfg, sc)

    def grid():
        amp = resolve_precision(cfg, {i: sc.data_dir(k) for i, k in keys.items()})
        return expand(cfg, keys, get_registry(), amp=amp)

    (cell,) = grid().cells.values()
    entries = json.loads(cache.read_text())
    (key, entry), = entries.items()
    assert "1 threads" in key, "measured with the workers' thread count (cpus_per_trial)"
    assert cell.precision == ("bf16" if entry["bf16"] else "fp32")
    assert cell.train_recipe().amp == ("on" if entry["bf16"] else "off")
    entries[key]["bf16"] = not entry["bf16"]
    cache.write_text(json.dumps(entries))
    (flipped,) = grid().cells.values()
    assert flipped.precision != cell.precision and flipped.key != cell.key and flipped.code_hash != cell.code_hash
    assert flipped.purify_key == cell.purify_key, "precision is a train-stage matter"
