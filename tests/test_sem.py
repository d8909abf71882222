"""SEM / REM: budget after quantization, determinism, that SEM makes digits unlearnable for a cnn-small
victim, REM's inner attack (the plugin contract runs in test_check_params.py). Cheap params: cnn-small
surrogate, 16 px digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import Recorder

from arena import Context, Recipe, check_budget, make_splits, train_victim
from arena.models import build_model
from arena.registry import get_registry
from arena_plugins.sem import _uniform, augment, defensive_noise, pgd_attack

# 40 surrogate steps of 32 images instead of 5,000 of 128; J=2 samples and short PGDs with larger steps so
# the noise still reaches the budget edge in few iterations; rho_a = 1/255 (one of the paper's columns): a
# surrogate this short cannot also be robust at 4/255 and stay effective. The victim's accuracy on SEM data
# varies a lot with the seed at this size, hence J=2 and margins well inside that spread. Accuracy drops
# below the clean victim measured on this split (protector and victim seed 0/1/2, 2-core AMD EPYC, one
# thread): SEM 0.48/0.69/0.42, REM 0.45/0.69/0.74 (bars 0.25, 0.15), in 40 % of the protect time of the former
# 60 steps of 64 images, which dropped SEM 0.56/0.29 and REM 0.48/0.27 (seeds 0/1).
CHEAP = {
    "surrogate": "cnn-small", "train_steps": 40, "batch_size": 32, "samples": 2, "def_steps": 3,
    "def_step_size": 3 / 255, "rho_a": 1 / 255, "atk_steps": 1, "atk_step_size": 1 / 255, "aug_pad": 2,
    "lr_decay_every": 30,
}
TINY = {**CHEAP, "train_steps": 3, "batch_size": 16}


def _digits(train_size: int):
    tr, te = get_registry().dataset("digits").load(size=16)
    return make_splits(tr, te, train_size=train_size, test_size=300, seed=0)



pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("sem")]  # one worker computes the module's trained surrogate


def test_budget_and_same_seed_same_images(tmp_path):
    s = _digits(40)
    prot = get_registry().protector("sem", TINY)
    rec = Recorder()
    a = prot.protect(s.train, Context(seed=3, cache_dir=tmp_path / "a", progress=rec))
    assert not prot.last_info["cached"]
    assert [t["description"] for t in rec.tasks] == ["sem: robust surrogate", "sem: final noise"]
    assert [t["advanced"] for t in rec.tasks] == [TINY["train_steps"], 3]
    assert all(t["closed"] for t in rec.tasks)
    b = prot.protect(s.train, Context(seed=3, cache_dir=tmp_path / "b"))  # fresh cache: really recomputed
    assert a.images.dtype == torch.uint8 and torch.equal(a.labels, s.train.labels)
    m = check_budget(prot.budget(s.train), s.train.images, a.images, "sem")
    assert 0 < m["linf"] * 255 <= 8
    assert torch.equal(a.images, b.images)
    rec = Recorder()
    c = prot.protect(s.train, Context(seed=3, cache_dir=tmp_path / "a", progress=rec))  # cache hit
    assert torch.equal(a.images, c.images) and prot.last_info["cached"] and rec.tasks == []
    (cached,) = (tmp_path / "a").iterdir()
    assert "surrogate" in torch.load(cached, weights_only=True)
    d = get_registry().protector("sem", TINY).protect(s.train, Context(seed=4, cache_dir=tmp_path / "a"))
    assert not torch.equal(a.images, d.images), "the seed is ignored"


def test_sem_and_rem_make_digits_unlearnable(tmp_path):
    s = _digits(500)
    recipe = Recipe(epochs=10, batch_size=64, crop_pad=2)
    accs = {}
    for name, params in (("none", {}), ("sem", CHEAP), ("rem", CHEAP)):
        prot = get_registry().protector(name, params)
        protected = prot.protect(s.train, Context(seed=0, cache_dir=tmp_path))
        model = build_model("cnn-small", 10, 3, 16, seed=0)
        accs[name] = train_victim(model, protected, s.test, recipe, seed=0).clean_acc
    assert accs["none"] > 0.8, accs
    assert accs["sem"] < accs["none"] - 0.25, accs
    assert accs["rem"] < accs["none"] - 0.15, accs  # one 1/255 PGD step as the inner max: weaker here


@pytest.fixture(scope="module")
def trained():
    """A cnn-small that has learned 300 clean digits: the surrogate the noise is optimized against."""
    s = _digits(300)
    model = build_model("cnn-small", 10, 3, 16, seed=0)
    train_victim(model, s.train, None, Recipe(epochs=12, batch_size=64, crop_pad=2), seed=0)
    return model.eval(), s


def test_sem_noise_minimizes_loss_under_random_augmentation_and_perturbation(trained):
    """The defensive noise is fitted to the expectation over (t_j, delta_r): on fresh draws of both it must
    leave the surrogate a much lower loss than random noise of the same radius."""
    model, s = trained
    x, y = s.train.floats()[:128], s.train.labels[:128]
    p = {**get_registry().protector("sem", {"samples": 3, "def_steps": 5}).p, "aug_pad": 2}
    delta = defensive_noise(model, x, y, p, robust=False, gen=torch.Generator().manual_seed(0))
    assert float(delta.abs().max()) <= p["rho_u"] + 1e-6 and model.training is False
    gen = torch.Generator().manual_seed(1)  # fresh augmentations and perturbations, not the fitted ones

    def loss(d: torch.Tensor) -> float:
        xt = augment((x + d).clamp(0, 1), 2, True, gen)
        with torch.no_grad():
            return float(F.cross_entropy(model((xt + _uniform(xt, p["rho_a"], gen)).clamp(0, 1)), y))

    fitted, rand, clean = loss(delta), loss(_uniform(x, p["rho_u"], gen)), loss(torch.zeros_like(x))
    assert fitted < 0.8 * min(rand, clean), (fitted, rand, clean)


def test_rem_inner_attack_raises_loss_over_random_noise(trained):
    model, s = trained
    gen = torch.Generator().manual_seed(0)
    x, y = s.train.floats()[:128], s.train.labels[:128]
    xt = augment(x, 2, True, gen)
    rho = 4 / 255
    with torch.no_grad():
        rand = F.cross_entropy(model((xt + _uniform(xt, rho, gen)).clamp(0, 1)), y)
    d = pgd_attack(model, xt, y, rho, 5, 1 / 255, gen)
    assert float(d.abs().max()) <= rho + 1e-6
    assert float(((xt + d) - (xt + d).clamp(0, 1)).abs().max()) == 0.0
    with torch.no_grad():
        adv = F.cross_entropy(model(xt + d), y)
    assert float(adv) > float(rand) * 1.2, (float(adv), float(rand))


def test_augmentation_is_differentiable():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    augment(x, 2, True, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
