"""Issue 15's fidelity fixes: each test fails on the code before its fix (real training on tiny data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from arena import Recipe, TrainingMod
from arena.models import build_model
from arena.params import ParamError
from arena.tournament.config import ConfigError, load_config
from arena.trainer import lr_factor, train_victim, with_epochs

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {
    "name": "fid",
    "datasets": [{"name": "digits", "params": {"size": 16}, "train": 100, "test": 50}],
    "protectors": ["none"],
    "exploiters": ["none"],
    "architectures": ["cnn-small"],
    "recipe": {"epochs": 4},
}


def _config(tmp_path: Path, **change):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({**BASE, **change}))
    return load_config(p)


# -- 1. the step-decay schedule ------------------------------------------------------------------------
def test_step_schedule_matches_torch_multisteplr() -> None:
    r = Recipe(epochs=100, schedule="step", milestones=(75, 90), gamma=0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(r.milestones), gamma=r.gamma)
    for epoch in range(r.epochs):
        assert lr_factor(r, epoch, epoch / r.epochs) == pytest.approx(opt.param_groups[0]["lr"]), epoch
        opt.step()
        ref.step()


class Snapshots(TrainingMod):
    """Keeps a copy of the first conv's weights at every batch: what the learning rate did to them."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def perturb_batch(self, model, x, y, gen):
        self.weights.append(next(model.parameters()).detach().clone())
        return x


def test_step_schedule_freezes_weights_after_a_zero_gamma_milestone(digits16) -> None:
    """gamma 0 at milestone 1: the weights move in epoch 1 and never after (cosine would keep moving them)."""
    mod = Snapshots()
    recipe = Recipe(epochs=3, batch_size=128, schedule="step", milestones=(1,), gamma=0.0, crop_pad=0)
    train_victim(build_model("cnn-small", 10, 3, 16, seed=0), digits16.train, None, recipe, seed=0, mods=[mod])
    per_epoch = len(mod.weights) // 3
    first, later = mod.weights[: per_epoch + 1], mod.weights[per_epoch + 1 :]
    assert not torch.equal(first[0], first[-1]), "epoch 1 trains at the peak rate"
    assert all(torch.equal(w, first[-1]) for w in later), "after the milestone the rate is gamma * lr = 0"


@pytest.mark.parametrize("recipe,needle", [
    ({"schedule": "step"}, "schedule 'step' needs param 'milestones'"),
    ({"schedule": "step", "milestones": [3, 2]}, "param 'milestones' = [3, 2]: expected strictly increasing"),
    ({"schedule": "step", "milestones": [2, 4]}, "param 'milestones' = [2, 4]: expected epochs in 1..3"),
    ({"schedule": "step", "milestones": [0, 2]}, "param 'milestones' = [0, 2]: expected list of int >= 1"),
    ({"schedule": "step", "milestones": "2,3"}, "param 'milestones' = '2,3': expected list of int"),
    ({"milestones": [2]}, "milestones need schedule 'step'"),
    ({"schedule": "step", "milestones": [2], "gamma": 2.0}, "param 'gamma' = 2.0"),
])
def test_bad_step_schedule_is_one_line_naming_the_key(tmp_path: Path, recipe: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, recipe={"epochs": 4, **recipe})
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "t.yaml") in msg and needle in msg, msg


def test_step_schedule_parses_from_yaml_into_the_cell_keys(tmp_path: Path) -> None:
    from arena.registry import get_registry
    from arena.tournament.grid import expand

    step = _config(tmp_path, recipe={"epochs": 4, "schedule": "step", "milestones": [2, 3], "gamma": 0.5})
    assert step.recipe.milestones == (2, 3) and step.recipe.gamma == 0.5
    assert step.architectures[0].recipe == step.recipe
    other = _config(tmp_path, recipe={"epochs": 4, "schedule": "step", "milestones": [1, 3], "gamma": 0.5})
    reg = get_registry()
    keys = [set(expand(c, {0: "d"}, reg).cells) for c in (step, other)]
    assert keys[0] and keys[0].isdisjoint(keys[1]), "a different milestone is a different victim training"
    with pytest.raises(ParamError, match="milestones"):
        Recipe(epochs=4, schedule="step", milestones=(4,))


def test_with_epochs_keeps_the_milestones_where_they_were_relative_to_the_run() -> None:
    r = with_epochs(Recipe(epochs=100, schedule="step", milestones=(75, 90)), 20)
    assert r.epochs == 20 and r.milestones == (15, 18)
    early = with_epochs(Recipe(epochs=100, schedule="step", milestones=(50, 51)), 2)
    assert early.milestones == (1,), "milestones that fall on one epoch merge"
    gone = with_epochs(Recipe(epochs=100, schedule="step", milestones=(1, 2)), 2)
    assert gone.milestones == () and gone.schedule == "constant", "a milestone rounded to epoch 0 is dropped"


# -- 2. plugins get the tournament's recipe; it keys the stages that read it -------------------------------
def _protect_keys(cfg) -> dict[str, set[str]]:
    from arena.registry import get_registry, load_extra_plugins
    from arena.tournament.grid import expand

    reg = get_registry()
    load_extra_plugins(reg, cfg.plugin_modules)
    g = expand(cfg, {0: "d"}, reg)
    out: dict[str, set[str]] = {}
    for job in g.protects.values():
        out.setdefault(job.protector.name, set()).add(job.key)
    return out


def test_recipe_is_in_the_protect_key_only_of_protectors_that_read_it(tmp_path: Path) -> None:
    prots = {"protectors": ["none", "confoundergan"]}
    a = _protect_keys(_config(tmp_path, **prots, recipe={"epochs": 4}))
    b = _protect_keys(_config(tmp_path, **prots, recipe={"epochs": 4, "lr": 0.05}))
    assert a["confoundergan"] != b["confoundergan"], "ConfounderGAN trains its classifier f with the recipe"
    assert a["none"] == b["none"], "a protector that ignores the recipe keeps one stage across recipes"
    # two architectures with their own recipes: still one protect stage per protector in one tournament
    archs = [{"name": "cnn-small"}, {"name": "cnn-small", "label": "long", "recipe": {"epochs": 8}}]
    c = _protect_keys(_config(tmp_path, **prots, architectures=archs, recipe={"epochs": 4}))
    assert c == a


def test_worker_hands_the_protector_the_tournament_recipe(tmp_path: Path) -> None:
    from arena.registry import get_registry, load_extra_plugins
    from arena.tournament.grid import expand
    from arena.tournament.runner import prepare_data
    from arena.tournament.stagecache import StageCache
    from arena.tournament.worker import StageRunner

    cfg = _config(tmp_path, plugins=["tests.arena_test_plugins"], protectors=["test-recipe-echo"],
                  recipe={"epochs": 3, "lr": 0.02})
    cache = StageCache(tmp_path / "cache")
    reg = get_registry()
    load_extra_plugins(reg, cfg.plugin_modules)
    (job,) = expand(cfg, prepare_data(cfg, cache), reg).protects.values()
    meta = StageRunner(str(cache.root), plugin_modules=cfg.plugin_modules).protect(job)
    assert meta["status"] == "ok", meta.get("error")
    assert meta["info"] == {"recipe_epochs": cfg.recipe.epochs, "recipe_lr": cfg.recipe.lr}


# -- 3. class-wise EMN trains its surrogate on the whole split, tests and optimizes on the subset ------------
def _model_step_images(monkeypatch, digits16, tmp_path, **params) -> tuple[set[int], dict]:
    """Runs emn-classwise for one round and returns which train images its surrogate's model steps drew."""
    from arena import Context
    from arena.registry import get_registry
    from arena_plugins import emn_common

    drawn: set[int] = set()
    real = emn_common.model_steps

    def watching(model, opt, batches, steps, X, Y, noise_of, grad_clip):
        seen = [batches.next() for _ in range(steps)]  # the cycler continues where these left off
        for idx in seen:
            drawn.update(int(i) for i in torch.nonzero(
                (X[idx].flatten(1)[:, None, :] == digits16.train.images.flatten(1)[None]).all(-1))[:, 1])
        replay = iter(seen)
        batches_next = batches.next
        batches.next = lambda: next(replay)
        try:
            real(model, opt, batches, steps, X, Y, noise_of, grad_clip)
        finally:
            batches.next = batches_next

    monkeypatch.setattr(emn_common, "model_steps", watching)
    p = get_registry().protector("emn-classwise", {"surrogate": "cnn-small", "max_rounds": 1, "stop_error": 0.0,
                                                   "batch_size": 64, "model_steps": 20, **params})
    with pytest.warns(RuntimeWarning, match="max_rounds"):
        p.protect(digits16.train, Context(seed=0, scratch=tmp_path / "s", cache_dir=tmp_path / "c"))
    return drawn, p.last_info


def test_classwise_surrogate_trains_on_the_whole_split(monkeypatch, digits16, tmp_path) -> None:
    n = len(digits16.train)
    drawn, info = _model_step_images(monkeypatch, digits16, tmp_path)
    subset = info["subset_size"]
    assert subset < n / 2
    assert len(drawn) > subset, f"20 steps of 64 drew {len(drawn)} images: more than the {subset}-image subset"
    old, old_info = _model_step_images(monkeypatch, digits16, tmp_path / "old", train_on="subset")
    assert len(old) <= old_info["subset_size"] == subset, "train_on=subset keeps the previous behaviour"


# -- 4. iss-bdr posterizes as ISS's code does ----------------------------------------------------------------
def test_iss_bdr_default_is_torchvision_posterize(digits16) -> None:
    from torchvision.transforms import functional as TF

    from arena import Context
    from arena.registry import get_registry

    reg = get_registry()
    protected = digits16.train.subset(torch.arange(64), origin="protected:none")
    for bits in (1, 2, 5):
        out = reg.exploiter("iss-bdr", {"bits": bits}).purify(protected, None, Context()).images
        assert torch.equal(out, TF.posterize(protected.images, bits)), bits
    old = reg.exploiter("iss-bdr", {"bits": 2, "mode": "round"}).purify(protected, None, Context()).images
    assert set(torch.unique(old).tolist()) <= {0, 85, 170, 255}, "mode=round keeps evenly spaced levels"


# -- 5. early stopping: patience and a clean share of the validation split ------------------------------------
def _early_stopped(digits16, params: dict, protector: str = "none", epochs: int = 12):
    from arena import Context
    from arena.registry import get_registry
    from arena.stages import run_protect, run_train

    reg = get_registry()
    ctx = Context(seed=0)
    prot = run_protect(reg.protector(protector, {"ratio": 0.25} if protector != "none" else {}), digits16.train, ctx)
    ex = reg.exploiter("early-stopping", params)
    return run_train("cnn-small", prot.data, digits16.test, Recipe(epochs=epochs, crop_pad=0, amp="off"), seed=0,
                     ctx=ctx, exploiters=[ex], clean_train=digits16.train)


def test_patience_stops_training_once_validation_stalls(digits16) -> None:
    patience = 2
    res = _early_stopped(digits16, {"patience": patience, "holdout_fraction": 0.2})
    stopped = int(res.extra["stopped_epoch"])
    assert stopped < res.epochs and len(res.acc_curve) == len(res.val_curve) == stopped
    assert stopped - res.selected_epoch == patience
    assert max(res.val_curve[res.selected_epoch:]) <= res.val_curve[res.selected_epoch - 1]


def test_clean_validation_share_tracks_clean_test_accuracy(digits16) -> None:
    """On a class-patch shortcut, a protected validation split scores the shortcut; a clean one scores what
    the victim learnt, as the clean test split does."""
    gap = []
    for ratio in (0.0, 1.0):
        res = _early_stopped(digits16, {"clean_val_ratio": ratio, "holdout_fraction": 0.2}, "classwise-patch", 4)
        gap.append(sum(abs(v - t) for v, t in zip(res.val_curve, res.acc_curve)) / len(res.val_curve))
    assert gap[1] < gap[0] / 2, gap


# -- 6. AutoAugment runs before the recipe's crop+flip, as EMN's Fast AutoAugment --------------------------
class Whiten(TrainingMod):
    """Sets every image to white: whatever the crop pads in afterwards stays black, so the order shows."""

    def __init__(self, first: bool) -> None:
        self.before_crop_flip = first

    def transform_batch(self, x, y, gen):
        return torch.ones_like(x), y


class Seen(TrainingMod):
    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def perturb_batch(self, model, x, y, gen):
        self.batches.append(x.detach().clone())
        return x


def _black_share(digits16, mod: TrainingMod) -> float:
    spy = Seen()
    recipe = Recipe(epochs=1, batch_size=128, crop_pad=4, flip=True, amp="off")
    train_victim(build_model("cnn-small", 10, 3, 16, seed=0), digits16.train, None, recipe, seed=0, mods=[mod, spy])
    return float((torch.cat(spy.batches) == 0).float().mean())


def test_before_crop_flip_mods_run_before_the_recipe_crop(digits16) -> None:
    assert _black_share(digits16, Whiten(first=False)) == 0.0, "whitened after the crop: no padding left"
    assert _black_share(digits16, Whiten(first=True)) > 0.2, "whitened first: the crop's zero padding shows"


def test_autoaugment_runs_first_by_default() -> None:
    from arena.registry import get_registry

    reg = get_registry()
    assert reg.exploiter("autoaugment").training_mod(None).before_crop_flip
    assert not reg.exploiter("autoaugment", {"order": "after-crop-flip"}).training_mod(None).before_crop_flip


# -- 7. JCDP's reference sampler: fixed-large variance, MSE guidance for t > 10, LPIPS at t <= 10 ------------
JCDP_TINY = {"ddpm_channels": "8,16", "ddpm_steps": 40, "ddpm_batch_size": 32, "ckpt_every": 10,
             "n_rounds": 1, "batch_size": 16}


def _purified(digits16, tmp_path: Path, name: str, **params) -> torch.Tensor:
    from arena import Context
    from arena.registry import get_registry
    from arena.stages import run_purify

    sub = digits16.train.subset(list(range(16)))
    prot = sub.with_images(sub.images.clone(), "protected:test")
    ex = get_registry().exploiter(name, {**JCDP_TINY, **params})
    ctx = Context(seed=0, scratch=tmp_path / "s", cache_dir=tmp_path / "c")
    return run_purify([ex], prot, digits16.raw, ctx).data.images


@pytest.mark.filterwarnings("ignore:jcdp. ImageNet AlexNet")
def test_jcdp_reference_sampler_guides_with_mse_only_above_t10(digits16, tmp_path) -> None:
    """A walk of 8 steps (t = 7..0) is all LPIPS territory: with LPIPS off, even a strong MSE weight leaves
    the reference walk exactly unguided; the earlier posterior sampler pulls every step."""
    walk = {"t_p": 8, "lambda1": 2000.0, "lambda2": 0.0}
    uncond = _purified(digits16, tmp_path, "jcdp-uncond", t_p=8)
    assert torch.equal(_purified(digits16, tmp_path, "jcdp", **walk), uncond)
    old_uncond = _purified(digits16, tmp_path, "jcdp-uncond", t_p=8, sampler="posterior")
    assert not torch.equal(old_uncond, uncond), "the reference walk adds beta_t noise, not beta_tilde_t"
    old = _purified(digits16, tmp_path, "jcdp", **walk, sampler="posterior")
    assert not torch.equal(old, old_uncond)
    # above the switch the MSE term acts: a 14-step walk now differs from the unguided one
    deep = {**walk, "t_p": 14}
    assert not torch.equal(_purified(digits16, tmp_path, "jcdp", **deep),
                           _purified(digits16, tmp_path, "jcdp-uncond", t_p=14))


def test_fixed_large_variance_is_beta_t() -> None:
    from arena_plugins import ddpm

    s = ddpm.schedule()
    assert torch.equal(s["fixed_large_var"][1:], s["betas"][1:])
    assert s["fixed_large_var"][0] == s["post_var"][1], "guided-diffusion's fixedlarge takes beta_tilde_1 at t=0"
