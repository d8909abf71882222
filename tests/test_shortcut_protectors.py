"""The shortcut protectors of issue 15 (lsp, ar, ops, cuda, random-noise) on real data: digits at 16 px, cnn-small.

Each must hold its budget on the stored uint8 images and be reproducible for a seed; the four that claim to
protect must cost a victim a clear share of its clean accuracy. The params below are the documented
small-image settings of each plugin's docstring (the CIFAR-10 defaults barely touch digits, which a victim
learns from content within two epochs); ``random-noise`` is not expected to protect and is not asked to.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import EMN_VICTIM

from arena import ArenaError, Budget, Context, Recipe, check_budget, train_victim
from arena.models import build_model
from arena.registry import get_registry

DIGITS = {
    "lsp": {"patch": 8},
    "ar": {"l2": 2.0, "min_response": 5.0},
    "cuda": {"kernel": 5},
    "ops": {"pixels": 16},
    "random-noise": {},
}
PROTECTING = ("lsp", "ar", "cuda", "ops")
MARGIN = 0.25  # a protector must take at least this much clean accuracy from the victim
# pad 2 at 16 px = the usual pad 4 at 32 px; float32 so the bars do not depend on the CPU's bf16
RECIPE = Recipe(epochs=10, batch_size=128, crop_pad=2, amp="off")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("shortcut")]  # one worker computes the module's clean victim


def _protect(name: str, train, seed: int = 0, params: dict | None = None):
    p = get_registry().protector(name, DIGITS[name] if params is None else params)
    out = p.protect(train, Context(seed=seed))
    m = check_budget(p.budget(train), train.images, out.images, name)  # raises if quantization broke it
    return p, out, m


def _victim_acc(data, test, mods=None, recipe: Recipe = RECIPE) -> float:
    model = build_model("cnn-small", data.num_classes, 3, data.shape[1], seed=0)
    return train_victim(model, data, test, recipe, seed=0, mods=mods).clean_acc


@pytest.fixture(scope="module")
def clean_acc(digits16, clean16_acc) -> float:
    # conftest's clean16_acc is _victim_acc(digits16.train, digits16.test): the same cnn-small, seed and RECIPE
    assert RECIPE == Recipe(**EMN_VICTIM), "RECIPE and conftest.EMN_VICTIM must stay one victim to share it"
    acc = clean16_acc
    assert acc >= 0.9, f"the clean recipe itself is broken ({acc:.3f})"
    return acc


@pytest.mark.parametrize("name", list(DIGITS))
def test_budget_holds_and_same_seed_same_images(name, digits16):
    train = digits16.train
    p, a, m = _protect(name, train)
    _, b, _ = _protect(name, train)
    assert torch.equal(a.images, b.images), f"{name}: same seed gave different images"
    assert torch.equal(a.labels, train.labels) and not torch.equal(a.images, train.images)
    assert p.last_info, f"{name} reports nothing about what it chose"
    if name != "ops":  # the pixel search is deterministic by design (the reference has no randomness)
        _, c, _ = _protect(name, train, seed=1)
        assert not torch.equal(a.images, c.images), f"{name}: the seed is ignored"
    budget = p.budget(train)
    if budget.kind == "l2":  # the radius is used, not just respected
        assert budget.value * 0.8 < m["l2"] <= budget.value + 1e-6


@pytest.mark.parametrize("name", PROTECTING)
def test_victim_loses_clean_accuracy(name, digits16, clean_acc):
    _, out, _ = _protect(name, digits16.train)
    acc = _victim_acc(out, digits16.test)
    assert acc < clean_acc - MARGIN, f"{name} victim {acc:.3f} vs clean {clean_acc:.3f}"


@pytest.mark.slow
def test_ops_survives_adversarial_training(digits16):
    """APBench: OPS keeps CIFAR-10 at 15 % even after adversarial training, because one pixel moved to a
    corner of the colour cube is far outside any L-inf ball the attacker trains against. A cheap Madry AT
    (8/255, 2 steps of 4/255) on both sides: the protected victim must stay well below the clean one.
    6 epochs, not RECIPE's 10 (an adversarial epoch costs three plain ones): measured on this split, victim
    seeds 0/1, clean 0.92/0.89 (bar 0.8), drop 0.66/0.65 (bar 0.25); at 4 epochs the clean victim fell to
    0.85/0.77, at or below its bar."""
    ex = get_registry().exploiter("adversarial-training", {"steps": 2, "step_size": 4 / 255, "eval_steps": 0})
    _, out, _ = _protect("ops", digits16.train)
    recipe = replace(RECIPE, epochs=6)
    clean_at = _victim_acc(digits16.train, digits16.test, mods=[ex.training_mod(Context())], recipe=recipe)
    ops_at = _victim_acc(out, digits16.test, mods=[ex.training_mod(Context())], recipe=recipe)
    assert clean_at >= 0.8, f"adversarial training itself broke the clean victim ({clean_at:.3f})"
    assert ops_at < clean_at - MARGIN, f"ops under adversarial training {ops_at:.3f} vs clean {clean_at:.3f}"


def test_l2_radii_follow_the_papers_units():
    """LSP's radius is 6/255 * sqrt(3072) = 1.304 and AR's 1.0 on 3 x 32 x 32 in [0,1] units; both keep the
    per-pixel RMS on other sizes (half the radius at 16 px, three times at 96 px as AR's STL-10)."""
    reg = get_registry()
    shapes = {s: type("S", (), {"shape": (3, s, s)})() for s in (16, 32, 96)}
    lsp, ar = reg.protector("lsp"), reg.protector("ar")
    assert lsp.budget(shapes[32]).value == pytest.approx(6 / 255 * 3072 ** 0.5)
    assert ar.budget(shapes[32]).value == pytest.approx(1.0)
    for p in (lsp, ar):
        assert p.budget(shapes[16]).value == pytest.approx(p.budget(shapes[32]).value / 2)
        assert p.budget(shapes[96]).value == pytest.approx(p.budget(shapes[32]).value * 3)
    assert reg.protector("lsp", {"l2": 0.5}).budget(shapes[96]).value == 0.5
    assert reg.protector("cuda").budget(shapes[32]).kind == "none"
    assert reg.protector("ops").budget(shapes[32]).describe() == "L0 1 pixel"


def test_l2_quantization_shrinks_what_rounding_lengthens():
    """A delta of exactly the radius whose components round up (0.6 and 1.2 -> 1 grey level) would leave the
    ball; the stored change must be pulled back inside, and an image already inside keeps scale 1."""
    from arena_plugins.l2_common import quantize_l2

    clean = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
    delta = torch.full((2, 3, 8, 8), 0.6 / 255)
    delta[0, :, :, ::2] = 1.2 / 255
    delta[1] = 0.0
    delta[1, 0, 0, 0] = 3 / 255
    radius = float(delta[0].norm())
    out = quantize_l2(clean, delta, radius)
    assert float(((delta[0] * 255).round() / 255).norm()) > radius  # plain rounding would break the budget
    m = check_budget(Budget("l2", radius), clean, out, "l2")
    assert m["l2"] <= radius and (out[0] != clean[0]).any(), "shrunk onto the ball, not to zero"
    assert out[1, 0, 0, 0] == 103 and (out[1].flatten()[1:] == 100).all()


def test_ar_no_class_degenerates(digits16):
    """Upstream once kept coefficients whose signal was NaN, and a whole class came out black. Every class's
    noise here is finite and uses its radius, and the finder rejects a process that is not bounded."""
    from arena_plugins.ar import _refuse_degenerate, find_processes

    train = digits16.train
    p, out, _ = _protect("ar", train)
    d = (out.images.float() - train.images.float()) / 255
    r = p.budget(train).value
    for k in range(train.num_classes):
        dk = d[train.labels == k].flatten(1)
        norms = dk.norm(dim=1)
        assert torch.isfinite(dk).all() and (norms > 0.5 * r).all(), f"class {k}: degenerate AR noise"
        assert out.images[train.labels == k].float().mean() > 0.5 * train.images[train.labels == k].float().mean()
    assert len(p.last_info["coefficients"]) == train.num_classes
    assert p.last_info["lowest_other_response"] >= DIGITS["ar"]["min_response"]

    params = {**p.p, "max_candidates": 1024, "norm_bound": 1e-3}  # no process stays that small
    with pytest.raises(ArenaError, match=r"found 0 of 10 AR processes in 1024 candidates"):
        find_processes(10, 3, (20, 20), params, torch.Generator().manual_seed(0))
    bad = torch.zeros((2, 3, 4, 4))
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ArenaError, match=r"class 7's AR noise degenerated"):
        _refuse_degenerate(bad + 1.0, torch.tensor([3, 7]))


def test_ops_changes_one_pixel_per_class_position(digits16):
    train = digits16.train
    p, out, m = _protect("ops", train)
    assert m["pixels"] == DIGITS["ops"]["pixels"]
    changed = (out.images != train.images).any(dim=1)  # N x H x W
    for k, picks in enumerate(p.last_info["chosen"].values()):
        idx = train.labels == k
        where = {(q["row"], q["col"]) for q in picks}
        assert len(where) == len(picks) == DIGITS["ops"]["pixels"]  # distinct positions, one class pattern
        assert {tuple(rc) for rc in changed[idx].sum(dim=0).nonzero().tolist()} <= where
        for q in picks:
            assert (out.images[idx][:, :, q["row"], q["col"]] == torch.tensor(q["colour"], dtype=torch.uint8)).all()
    one, o1, _ = _protect("ops", train, params={})
    assert check_budget(one.budget(train), train.images, o1.images, "ops")["pixels"] == 1  # the paper's L0 1


def test_cuda_is_a_classwise_blur_not_a_bounded_noise(digits16):
    train = digits16.train
    p, out, m = _protect("cuda", train)
    assert p.budget(train).kind == "none" and p.last_info["norm_bounded"] is False
    assert m["linf"] > 64 / 255  # far outside any L-inf budget the other protectors declare
    filters = torch.tensor(p.last_info["filters"])
    k = DIGITS["cuda"]["kernel"]
    assert filters.shape == (train.num_classes, k * k) and (filters.max(dim=1).values == 1.0).all()
    assert (filters.sort(dim=1).values[:, -2] <= 0.3).all()  # the rest U(0, 0.3)
