"""ConfounderGAN: contract, label-free encryption of unseen images, unlearnability, save/load."""

from __future__ import annotations

import math

import pytest
import torch

from arena import Context, Recipe, check_budget, train_victim
from arena.registry import get_registry

# Cheap but meaningful on digits at 16 px: a cnn-small classifier f, a few GAN epochs.
CHEAP = {"classifier": "cnn-small", "classifier_epochs": 4, "epochs": 20, "gan_weight": 0.0}

pytestmark = pytest.mark.xdist_group("confoundergan")  # one worker fits the module's encoder


@pytest.fixture(scope="module")
def fitted(digits16, tmp_path_factory):
    ctx = Context(seed=0, cache_dir=tmp_path_factory.mktemp("cg-cache"), recipe=Recipe(epochs=4))
    prot = get_registry().protector("confoundergan", CHEAP)
    return prot, prot.fit(digits16.train, ctx), ctx


def test_encodes_unseen_unlabeled_images_within_budget(digits16, fitted) -> None:
    prot, enc, _ = fitted
    eps = prot.budget(digits16.train).value
    assert math.isclose(eps, 8 / 255) and enc.budget.value == eps
    for new in (digits16.raw, digits16.test):  # images G never saw, and no labels handed over
        out = enc.encode(new.images)
        assert out.dtype == torch.uint8 and out.shape == new.images.shape
        m = check_budget(enc.budget, new.images, out, "confoundergan encoder")
        assert 0 < m["linf"] <= 8 / 255 + 1e-9
    # fully convolutional: other sizes (not multiples of 4) and a batch of one keep the bound
    odd = torch.randint(0, 256, (1, 3, 23, 37), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    check_budget(enc.budget, odd, enc.encode(odd), "odd size")


def test_victim_learns_far_less_from_protected_data(digits16, fitted) -> None:
    prot, enc, ctx = fitted
    protected = digits16.train.with_images(enc.encode(digits16.train.images), "protected:confoundergan")
    recipe = Recipe(epochs=12)
    accs = {}
    for name, data in (("clean", digits16.train), ("protected", protected)):
        model = ctx.build_model("cnn-small", data, seed=0)
        accs[name] = train_victim(model, data, digits16.test, recipe, seed=0).clean_acc
    assert accs["clean"] > 0.8, accs
    assert accs["protected"] < accs["clean"] - 0.2, accs


def test_encoder_save_load_round_trip(digits16, fitted, tmp_path) -> None:
    prot, enc, ctx = fitted
    path = tmp_path / "G.pt"
    enc.save(path)
    fresh = get_registry().protector("confoundergan", {})  # other params: the file carries the config
    again = fresh.load_encoder(path, Context(seed=5))
    assert again.config["image_size"] == 16 and again.eps == enc.eps
    x = digits16.raw.images[:50]
    assert torch.equal(enc.encode(x), again.encode(x))


def test_fit_is_cached(digits16, fitted) -> None:
    prot, enc, ctx = fitted
    again = prot.fit(digits16.train, ctx)  # served from ctx.cache_path: same weights, no training
    x = digits16.raw.images[:20]
    assert torch.equal(enc.encode(x), again.encode(x))


def test_the_ceiling_bounds_what_g_reaches_and_says_when_the_objective_is_out_of_reach(digits16, fitted) -> None:
    """The ceiling is the best single noise per class: G's noise-alone accuracy cannot beat it by more than
    the PGD's slack, and a classifier that sees the noise rescaled to [-1, 1] is driven to every class while
    the raw noise (|n| <= eps) leaves it short: the diagnostic tells "f cannot be confounded" from "G did
    not train"."""
    prot, enc, ctx = fitted
    info = enc.config["fit_info"]
    assert 0.0 <= info["f_noise_ceiling"] <= 1.0
    assert info["f_acc_noise_alone"] <= info["f_noise_ceiling"] + 0.05, info
    f = prot._classifier(digits16.train, ctx)  # cached by the fixture's fit
    eps = prot.eps_for(digits16.train)
    raw = prot._noise_ceiling(f, digits16.train, eps, False, ctx)
    unit = prot._noise_ceiling(f, digits16.train, eps, True, ctx)
    assert raw == info["f_noise_ceiling"]
    assert unit > 0.9 and unit > raw + 0.2, (raw, unit)
