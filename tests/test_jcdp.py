"""JCDP and its DDPM on real data (digits at 16 px), with a UNet small enough to train in seconds.

What matters here: the DDPM learns from the raw pool (its loss falls), training survives a kill and
resumes to the same weights, purification returns valid images whose distance to the input grows with
the diffusion depth, guidance keeps the output nearer the protected image than the unconditional walk,
and the arena never hands the plugin clean images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arena import ArenaError, Context, ImageSet, ParamError
from arena.progress import Progress
from arena.registry import get_registry
from arena.stages import exploit_inputs, run_purify
from arena_plugins import ddpm, jcdp

# Two-level 8-16 UNet: ~30 k params, a few ms per step at 16 px. Enough to show the mechanics, not to purify well.
pytestmark = pytest.mark.filterwarnings("ignore:jcdp. ImageNet AlexNet")

TINY = {"ddpm_channels": "8,16", "ddpm_steps": 40, "ddpm_batch_size": 32, "ckpt_every": 10,
        "t_p": 5, "n_rounds": 1, "batch_size": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


class Killer(Progress):
    """Progress that raises after ``stop_after`` advances of the DDPM task (a killed worker)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.starts: list[int] = []

    def task(self, description: str, total: int | None = None):
        outer = self
        done = {"n": 0, "first": True}

        class _T:
            def advance(self, n: int = 1, **info) -> None:
                if done["first"]:
                    outer.starts.append(n if not info else 0)  # a resumed task first advances by the steps done
                    done["first"] = False
                done["n"] += n
                if outer.stop_after is not None and "loss" in info and done["n"] >= outer.stop_after:
                    raise KeyboardInterrupt

            def close(self) -> None:
                pass

        return _T()


def _ctx(tmp: Path, progress: Progress | None = None, seed: int = 0) -> Context:
    return Context(seed=seed, scratch=tmp / "scratch", cache_dir=tmp / "cache", progress=progress or Progress())


def _protected(splits, n: int = 32) -> ImageSet:
    """Train images relabelled as a protector's output: what the arena hands an exploiter."""
    sub = splits.train.subset(list(range(n)))
    return sub.with_images(sub.images.clone(), "protected:test")


def _dist(a: ImageSet, b: ImageSet) -> float:
    return float((a.images.float() - b.images.float()).pow(2).mean().sqrt())


def test_ddpm_trains_on_the_raw_pool_and_its_loss_falls(digits16, tmp_path):
    cfg = ddpm.DDPMConfig(channels=(8, 16), steps=80, batch_size=32, ckpt_every=1000)
    path = tmp_path / "ddpm.pt"
    _, info = ddpm.train_or_load(digits16.raw.images, cfg, path, _ctx(tmp_path))
    assert path.exists() and not info["ddpm_cached"]
    assert info["ddpm_loss"] < 0.8 * info["ddpm_loss_first"], info
    ddpm._MEMO.clear()
    _, again = ddpm.train_or_load(digits16.raw.images, cfg, path, _ctx(tmp_path))
    assert again["ddpm_cached"] and again["ddpm_loss"] == info["ddpm_loss"]


def test_killed_ddpm_training_resumes_to_the_same_weights(digits16, tmp_path):
    cfg = ddpm.DDPMConfig(channels=(8, 16), steps=30, batch_size=16, ckpt_every=10)
    pool = digits16.raw.images
    whole, _ = ddpm.train_or_load(pool, cfg, tmp_path / "a" / "ddpm.pt", _ctx(tmp_path))
    target = tmp_path / "b" / "ddpm.pt"
    with pytest.raises(KeyboardInterrupt):
        ddpm.train_or_load(pool, cfg, target, _ctx(tmp_path, Killer(stop_after=25)))
    assert not target.exists() and target.with_name(target.name + ".partial").exists()
    resumed_progress = Killer()
    resumed, _ = ddpm.train_or_load(pool, cfg, target, _ctx(tmp_path, resumed_progress))
    assert resumed_progress.starts == [20]  # restarted from the step-20 checkpoint, not from 0
    assert not target.with_name(target.name + ".partial").exists()
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_cache_key_follows_pool_content_and_params(digits16):
    cfg = ddpm.DDPMConfig(channels=(8, 16))
    fp = digits16.raw.fingerprint()
    other = digits16.raw.subset(list(range(len(digits16.raw) - 1))).fingerprint()
    name = ddpm.cache_name(fp, cfg, None)
    assert name == ddpm.cache_name(fp, ddpm.replace(cfg, ckpt_every=7), None)
    assert name != ddpm.cache_name(other, cfg, None)
    assert name != ddpm.cache_name(fp, ddpm.replace(cfg, steps=cfg.steps + 1), None)


def test_unet_is_sized_by_params():
    reg = get_registry()
    ex = reg.exploiter("jcdp", {"ddpm_channels": "16,32,32", "ddpm_layers": 2, "ddpm_attention": "8"})
    net = ddpm.build_unet(ex.ddpm_config(), 3, 16)
    kinds = [type(b).__name__ for b in net.down_blocks]
    assert kinds == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]  # attention at the 8 px level only
    assert len(net.down_blocks[0].resnets) == 2
    paper = reg.exploiter("jcdp", {"preset": "paper"}).ddpm_config()
    assert paper.channels == (128, 256, 256, 256) and paper.attn_res == (16,) and paper.layers == 2


@pytest.mark.parametrize("params", [{"ddpm_channels": "32;64"}, {"ddpm_channels": "32"},
                                    {"ddpm_attention": "x16"}, {"t_p": 0}, {"lambda1": -1.0}])
def test_bad_params_are_one_line_errors(params):
    with pytest.raises(ParamError) as e:
        get_registry().exploiter("jcdp", params)
    assert "\n" not in str(e.value) and next(iter(params)) in str(e.value)


def test_purification_distance_grows_with_diffusion_depth(digits16, tmp_path):
    prot = _protected(digits16)
    reg = get_registry()
    dists = []
    for t_p in (2, 30, 150):
        ex = reg.exploiter("jcdp-uncond", {**TINY, "t_p": t_p})
        out = run_purify([ex], prot, digits16.raw, _ctx(tmp_path))
        assert out.data.images.dtype == torch.uint8 and out.data.images.shape == prot.images.shape
        assert torch.equal(out.data.labels, prot.labels)
        dists.append(_dist(out.data, prot))
    assert dists[0] < dists[1] < dists[2], dists


def test_guidance_keeps_output_closer_to_the_protected_image(digits16, tmp_path):
    prot = _protected(digits16)
    reg = get_registry()
    params = {**TINY, "t_p": 40}
    uncond = run_purify([reg.exploiter("jcdp-uncond", params)], prot, digits16.raw, _ctx(tmp_path))
    guided_ex = reg.exploiter("jcdp", params)
    guided = run_purify([guided_ex], prot, digits16.raw, _ctx(tmp_path))
    assert _dist(guided.data, prot) < _dist(uncond.data, prot)
    assert guided.metrics["lpips_backbone"] in ("imagenet", "random")  # goes into the result row
    assert guided.metrics["ddpm_cached"]  # the DDPM trained for jcdp-uncond is reused, not retrained
    mse_only = run_purify([reg.exploiter("jcdp", {**params, "lambda2": 0.0})], prot, digits16.raw, _ctx(tmp_path))
    assert _dist(mse_only.data, prot) < _dist(uncond.data, prot)


def test_needs_a_raw_pool(digits16, tmp_path):
    ex = get_registry().exploiter("jcdp", TINY)
    prot, raw = exploit_inputs([ex], _protected(digits16, 4), digits16)
    assert raw is not None and raw.origin == "raw" and bool((raw.labels == -1).all())
    with pytest.raises(ArenaError, match="raw pool"):
        run_purify([ex], prot, None, _ctx(tmp_path))


def test_random_lpips_backbone_is_seeded():
    jcdp._LPIPS.clear()
    a, backbone = jcdp.load_lpips()
    torch.manual_seed(12345)  # the global RNG state must not matter
    jcdp._LPIPS.clear()
    b, _ = jcdp.load_lpips()
    assert backbone in ("imagenet", "random")
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)
