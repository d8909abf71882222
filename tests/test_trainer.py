"""The victim trainer on real data: baselines behave as the issue's reference check, and a seed fixes
the result."""

from __future__ import annotations

import pytest
import torch

from arena import Context, Recipe, TrainingMod
from arena.augment import crop_flip, random_crop
from arena.registry import get_registry
from arena.stages import run_protect, run_train

# 16 px and 12 epochs: the same question as the 32 px / 20 epochs check, at a quarter of the cost
# per epoch (this test was the suite's slowest); pad 2 at 16 px is the usual pad 4 at 32 px.
RECIPE = Recipe(epochs=12, crop_pad=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def _acc(splits, protector: str, params: dict | None = None, recipe: Recipe = RECIPE, seed: int = 0):
    ctx = Context(seed=seed)
    prot = run_protect(get_registry().protector(protector, params), splits.train, ctx)
    return run_train("cnn-small", prot.data, splits.test, recipe, seed=seed, ctx=ctx)


def test_baselines_on_digits(digits16) -> None:
    """The issue's reference check (cnn-small; at 32 px and 20 epochs it gave none 92.6 %, 8x8 class patch
    39.7 %, class-wise noise 91.2 %): the class patch is a shortcut. That class-wise noise does not stop
    learning was a finding, printed and never asserted: its victim is no longer trained here (a third of the
    test's time); the quick tournament's leaderboard reports it."""
    none = _acc(digits16, "none")
    patch = _acc(digits16, "classwise-patch", {"ratio": 0.25})
    print(f"\ndigits 16px cnn-small 12 epochs: none {none.clean_acc:.3f}, classwise-patch(0.25) {patch.clean_acc:.3f}")
    assert none.clean_acc >= 0.90
    assert patch.clean_acc <= none.clean_acc - 0.25, "the class patch is a shortcut the victim learns instead"
    assert patch.train_acc > 0.95, "the victim fits the protected train split perfectly well"
    assert len(none.acc_curve) == RECIPE.epochs and none.best_acc == max(none.acc_curve)


def test_same_seed_same_accuracy(digits16) -> None:
    r = Recipe(epochs=3)
    a = _acc(digits16, "classwise-noise", recipe=r, seed=5)
    b = _acc(digits16, "classwise-noise", recipe=r, seed=5)
    c = _acc(digits16, "classwise-noise", recipe=r, seed=6)
    assert a.acc_curve == b.acc_curve and a.train_acc == b.train_acc
    assert a.acc_curve != c.acc_curve


def test_batched_crop_flip_is_a_per_image_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    y = random_crop(x, 2, g)
    assert y.shape == x.shape
    # every output is the input shifted by some (dy, dx) in [-2, 2] with zero fill
    import torch.nn.functional as F

    xp = F.pad(x, (2, 2, 2, 2))
    for i in range(64):
        assert any(torch.equal(y[i], xp[i, :, a : a + 8, b : b + 8]) for a in range(5) for b in range(5))
    shifts = {tuple(torch.nonzero(torch.stack([torch.stack([torch.tensor(torch.equal(y[i], xp[i, :, a:a + 8, b:b + 8]))
                                                              for b in range(5)]) for a in range(5)]))[0].tolist())
              for i in range(64)}
    assert len(shifts) > 5, "offsets differ between images"
    z = crop_flip(x, 0, True, torch.Generator().manual_seed(1))
    flipped = sum(torch.equal(z[i], x[i].flip(2)) for i in range(64))
    assert 16 < flipped < 48


class CountingMod(TrainingMod):
    """A recipe change that records what the trainer hands it (no mock: it takes part in training)."""

    holdout_fraction = 0.1

    def __init__(self) -> None:
        self.batches = 0
        self.perturbed = 0

    def configure(self, recipe):
        from dataclasses import replace

        return replace(recipe, epochs=2)

    def transform_batch(self, x, y, gen):
        self.batches += 1
        assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
        return x, y

    def perturb_batch(self, model, x, y, gen):
        assert model.training
        self.perturbed += 1
        return x


def test_training_mods_change_the_recipe(digits16) -> None:
    from arena.models import build_model
    from arena.trainer import train_victim

    mod = CountingMod()
    res = train_victim(build_model("cnn-small", 10, 3, 16, seed=0), digits16.train, digits16.test,
                       Recipe(epochs=50, batch_size=128), seed=0, mods=[mod])
    assert res.epochs == 2 and len(res.acc_curve) == 2 and len(res.val_curve) == 2
    assert mod.batches == mod.perturbed > 0
    assert res.selected_acc == res.acc_curve[res.selected_epoch - 1]
