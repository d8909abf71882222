"""Error-minimizing noise (emn-samplewise, emn-classwise) on real data: digits at 16 px, cnn-small.

The params below are the cheap settings (cnn-small surrogate, fewer but larger PGD steps) that still make
the method work on digits; the paper defaults differ only in cost.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import EMN_SAMPLEWISE, EMN_VICTIM, Recorder

from arena import Context, Recipe, check_budget, train_victim
from arena.models import build_model
from arena.progress import Progress
from arena.registry import get_registry

# Sample-wise: conftest.EMN_SAMPLEWISE, run once per session by the emn_digits fixture (test_exploiters reuses it).
SAMPLEWISE = EMN_SAMPLEWISE
CLASSWISE = {"surrogate": "cnn-small", "subset": 1.0, "batch_size": 64, "stop_error": 0.01}
TINY = {"surrogate": "cnn-small", "pgd_steps": 2, "max_rounds": 2, "batch_size": 16}
RECIPE = Recipe(**EMN_VICTIM)  # the victim of emn_digits, so the accuracies compare


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("emn-samplewise")]  # one worker: the session's emn_digits (test_exploiters joins the group)



def _ctx(tmp: Path, seed: int = 0, progress: Progress | None = None) -> Context:
    return Context(seed=seed, scratch=tmp / "scratch", cache_dir=tmp / "cache",
                   progress=progress or Progress())


def _victim_acc(data, test) -> float:
    model = build_model("cnn-small", data.num_classes, 3, data.shape[1], seed=0)
    return train_victim(model, data, test, RECIPE, seed=0).clean_acc


@pytest.fixture(scope="module")
def clean_acc(emn_digits) -> float:
    return emn_digits["clean"]


def _protect(name: str, params: dict, train, tmp: Path, seed: int = 0, progress: Progress | None = None):
    p = get_registry().protector(name, params)
    out = p.protect(train, _ctx(tmp, seed, progress))
    check_budget(p.budget(train), train.images, out.images, name)  # raises if quantization broke it
    return p, out


def test_samplewise_makes_digits_unlearnable(digits16, emn_digits):
    p, out, tmp_path = emn_digits["protector"], emn_digits["protected"], emn_digits["dir"]
    clean_acc = emn_digits["clean"]
    assert p.last_info["surrogate_train_acc"] > 0.99 and not p.last_info["hit_max_rounds"]
    d = out.images.float() - digits16.train.images.float()
    assert d.abs().max() == 16 and (d < 0).any(), "noise uses the full 16/255 and keeps its negative part"
    # Noise belongs to the image, not the label: two images of one class carry different noise.
    same = torch.nonzero(digits16.train.labels == 3).flatten()[:2]
    assert not torch.equal(d[same[0]], d[same[1]])
    emn_acc = emn_digits["emn"]
    assert clean_acc >= 0.90, f"the clean recipe itself is broken ({clean_acc:.3f})"
    assert emn_acc <= 0.35, f"EMN victim still reaches {emn_acc:.3f} (clean {clean_acc:.3f})"

    again = get_registry().protector("emn-samplewise", SAMPLEWISE)
    rec = Recorder()
    cached = again.protect(digits16.train, _ctx(tmp_path, progress=rec))  # same cache dir: a file read
    assert again.last_info["cached"] and torch.equal(cached.images, out.images)
    assert again.last_info["rounds"] == p.last_info["rounds"]
    assert rec.tasks == [], "a cache hit must not train a surrogate"
    cache_files = list((tmp_path / "cache").iterdir())
    assert len(cache_files) == 1 and "surrogate" in torch.load(cache_files[0], weights_only=True)


def test_classwise_lowers_accuracy(digits16, clean_acc, tmp_path):
    p, out = _protect("emn-classwise", CLASSWISE, digits16.train, tmp_path)
    assert p.last_info["surrogate_train_acc"] > 1 - CLASSWISE["stop_error"]  # the stop rule, not max_rounds
    assert not p.last_info["hit_max_rounds"]
    d = out.images.float() - digits16.train.images.float()
    x = digits16.train.images.float()
    labels = digits16.train.labels
    # One delta per class: wherever no pixel of the class saturated, all its images moved alike.
    for k in (0, 7):
        idx = torch.nonzero(labels == k).flatten()
        free = ((x[idx] > 8) & (x[idx] < 247)).all(dim=0)
        assert free.sum() > 50
        assert (d[idx][:, free] == d[idx[0]][free]).all()
    emn_acc = _victim_acc(out, digits16.test)
    assert emn_acc < clean_acc - 0.25, f"class-wise EMN victim {emn_acc:.3f} vs clean {clean_acc:.3f}"


def test_same_seed_same_images_and_max_rounds_reported(digits16, tmp_path):
    train = digits16.train.subset(torch.arange(200), origin="train")
    params = {**TINY, "stop_error": 0.0}  # unreachable: the run must stop at max_rounds and say so
    for name in ("emn-samplewise", "emn-classwise"):
        rec = Recorder()
        with pytest.warns(RuntimeWarning, match="max_rounds"):
            p1, a = _protect(name, params, train, tmp_path / f"{name}-a", progress=rec)
        (task,) = rec.tasks
        assert name in task["description"] and task["advanced"] == 2 and task["closed"], rec.tasks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _, b = _protect(name, params, train, tmp_path / f"{name}-b")  # fresh cache: recomputed
            _, c = _protect(name, params, train, tmp_path / f"{name}-c", seed=1)
        assert p1.last_info["hit_max_rounds"] and p1.last_info["rounds"] == 2
        assert torch.equal(a.images, b.images), f"{name}: same seed gave different images"
        assert not torch.equal(a.images, c.images), f"{name}: the seed is ignored"


def test_paper_defaults_and_eps_follows_image_size():
    sw, cw = get_registry().protector("emn-samplewise"), get_registry().protector("emn-classwise")
    assert (sw.p["pgd_steps"], sw.p["stop_error"], sw.p["model_steps"]) == (20, 0.01, 10)
    assert (sw.p["batch_size"], sw.p["lr"], sw.p["grad_clip"]) == (512, 0.1, 5.0)
    assert (cw.p["pgd_steps"], cw.p["stop_error"], cw.p["subset"]) == (1, 0.1, 0.2)
    assert sw.p["surrogate"] == "resnet18" and sw.p["eps"] is None and sw.p["step"] is None  # 8/255, eps/10
    for name in ("emn-samplewise", "emn-classwise"):
        p = get_registry().protector(name)
        small = type("S", (), {"shape": (3, 32, 32)})()
        large = type("L", (), {"shape": (3, 96, 96)})()
        assert p.budget(small).value == pytest.approx(8 / 255)
        assert p.budget(large).value == pytest.approx(16 / 255)
        assert get_registry().protector(name, {"eps": 4 / 255}).budget(large).value == pytest.approx(4 / 255)
