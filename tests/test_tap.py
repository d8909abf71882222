"""tap and hypo on 16 px digits with a cnn-small crafting model: the budget holds after uint8 quantization,
a seed gives the same images, the diagnostics say whether the crafting reached its objective, and an
undefended cnn-small victim trained on the protected split loses clean accuracy against one trained on the
unprotected split.

Small-data settings, measured on this 500-image split (victim cnn-small 10 epochs, clean 90%; seeds 0/1/2 of
the protector). At the papers' 8/255 neither protects reliably here: a 16 px image has a quarter of CIFAR's
pixels, so the same L-inf radius carries half the L2 energy. tap at 8/255 reaches 5-15% targeted success on
the crafting model and leaves the victim at 65-86% (20-50 steps, with or without augmentation); at 16/255,
40 steps of 4/255: 25-40%. hypo at 8/255, 20 steps of eps/5: 32/83/82%; at 16/255: 61/57/71% (10-epoch
crafting model), 25/60/45% with a 3-epoch one, which still has loss left to take away (a well-fitted model
is already near zero loss on its train images; 30 epochs: 76/88/78% at 8/255). hypo is the weaker method, as
in its paper (CIFAR-10 standard training 94 -> 74%), hence its smaller margin.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import Recorder

from arena import Context, Recipe, check_budget, make_splits, train_victim
from arena.models import build_model
from arena.registry import get_registry
from arena_plugins.tap import craft, start

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"surrogate": "cnn-small", "surrogate_epochs": 2, "steps": 3, "step_size": 4 / 255, "restarts": 1}
# The crafting model's training: the victim recipe at 16 px (pad 2 = the usual pad 4 at 32 px), float32 so
# the numbers do not depend on whether this CPU has native bf16.
RECIPE = Recipe(epochs=10, batch_size=64, crop_pad=2, amp="off")
SMALL = {"surrogate": "cnn-small", "surrogate_epochs": 10, "restarts": 1}
PROTECT = {"tap": {**SMALL, "eps": 16 / 255, "steps": 40, "step_size": 4 / 255},
           "hypo": {**SMALL, "eps": 16 / 255, "steps": 20, "surrogate_epochs": 3}}
# clean accuracy the victim loses at least (measured drops over seeds 0/1/2: tap >= 0.5, hypo >= 0.3)
MARGIN = {"tap": 0.3, "hypo": 0.2}


def _digits(train_size: int):
    tr, te = get_registry().dataset("digits").load(size=16)
    return make_splits(tr, te, train_size=train_size, test_size=300, seed=0)


@pytest.mark.parametrize("name", ["tap", "hypo"])
def test_budget_seed_cache_and_diagnostics(name, tmp_path):
    s = _digits(40)
    prot = get_registry().protector(name, TINY)
    rec = Recorder()
    a = prot.protect(s.train, Context(seed=3, cache_dir=tmp_path / "a", progress=rec, recipe=RECIPE))
    info = prot.last_info
    assert not info["cached"]
    assert [t["description"] for t in rec.tasks] == [f"{name}: crafting model", f"{name}: crafting"]
    assert all(t["closed"] for t in rec.tasks)
    assert a.images.dtype == torch.uint8 and torch.equal(a.labels, s.train.labels)
    m = check_budget(prot.budget(s.train), s.train.images, a.images, name)
    assert 0 < m["linf"] * 255 <= 8
    b = prot.protect(s.train, Context(seed=3, cache_dir=tmp_path / "b", recipe=RECIPE))  # fresh cache
    assert torch.equal(a.images, b.images)
    c = get_registry().protector(name, TINY).protect(s.train, Context(seed=4, cache_dir=tmp_path / "b",
                                                                      recipe=RECIPE))
    assert not torch.equal(a.images, c.images), "the seed is ignored"
    hit = prot.protect(s.train, Context(seed=3, cache_dir=tmp_path / "a", recipe=RECIPE))
    assert torch.equal(a.images, hit.images) and prot.last_info["cached"]
    assert 0 <= info["success_rate"] <= 1 and 0 <= info["surrogate_acc_clean"] <= 1
    assert info["converged"] == (info["success_rate"] >= prot.p["success_threshold"])
    assert info["final_loss"] < info["clean_objective_loss"], info  # the noise moved towards its objective


def test_tap_targets_the_next_class_and_checks_the_shift():
    prot = get_registry().protector("tap", {"shift": 3})
    y = torch.arange(10)
    assert torch.equal(prot.objective(y, 10), (y + 3) % 10)
    assert torch.equal(get_registry().protector("hypo").objective(y, 10), y)
    with pytest.raises(ValueError, match="shift"):
        prot.objective(y, 3)


def test_craft_descends_towards_the_label_it_is_given():
    """One loop, two objectives: towards the permuted label it raises the true-class loss; towards the
    true label it lowers it, both within the ball and the pixel range."""
    s = _digits(200)
    model = build_model("cnn-small", 10, 3, 16, seed=0)
    train_victim(model, s.train, None, RECIPE, seed=0)
    model.eval().requires_grad_(False)
    x, y = s.train.floats()[:128], s.train.labels[:128]
    gen = torch.Generator().manual_seed(0)
    eps = 8 / 255
    target = (y + 1) % 10
    d_tap = craft(model, x, target, eps, 2 / 255, 10, start(x, eps, "normal", gen), 4, gen)
    d_hyp = craft(model, x, y, eps, 2 / 255, 10, start(x, eps, "zero", gen), None, gen)
    for d in (d_tap, d_hyp):
        assert float(d.abs().max()) <= eps + 1e-6 and float((x + d).min()) >= 0 and float((x + d).max()) <= 1

    def ce(d: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x + d), labels))

    zero, rand = torch.zeros_like(x), (x + start(x, eps, "uniform", gen)).clamp(0, 1) - x
    for base in (zero, rand):  # better than no noise and than random noise of the same radius
        assert ce(d_tap, target) < ce(base, target) and ce(d_tap, y) > ce(base, y)
        assert ce(d_hyp, y) < ce(base, y)


def test_an_undefended_victim_loses_clean_accuracy(tmp_path):
    s = _digits(500)
    accs = {}
    for name, params in (("none", {}), *PROTECT.items()):
        prot = get_registry().protector(name, params)
        protected = prot.protect(s.train, Context(seed=0, cache_dir=tmp_path, recipe=RECIPE))
        model = build_model("cnn-small", 10, 3, 16, seed=0)
        accs[name] = train_victim(model, protected, s.test, RECIPE, seed=0).clean_acc
    assert accs["none"] > 0.8, accs
    for name, margin in MARGIN.items():
        assert accs[name] < accs["none"] - margin, accs
