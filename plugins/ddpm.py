"""An unconditional DDPM (Ho et al., 2020) trained on the exploiter's raw pool, cached and resumable.

JCDP needs a diffusion prior of the *data distribution* that never saw the protected images or the
test split. The attacker's raw pool (unlabeled images collected elsewhere) is all it may use, so the
model is trained here on that pool only, once per (pool content hash, DDPM params, version), and kept
under ``ctx.cache_path`` (a file lock makes concurrent tournament workers train it once; the arena keys that
directory by the code hash of ``plugins/jcdp.py`` and this module, so an edit retrains it). Training
writes an atomic checkpoint every ``ckpt_every`` steps (model, EMA, optimizer, RNG state, loss
history), so a killed run continues where it stopped and a finished one is only loaded.

Algorithm (Ho et al., Alg. 1): x0 ~ pool, t ~ U{0..T-1}, eps ~ N(0, I),
``loss = || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2``; AdamW; EMA of weights.
Linear betas 1e-4..0.02, T = 1000, epsilon prediction (``diffusers`` UNet2DModel + DDPMScheduler).

Differences from the DDPM paper's CIFAR-10 model, and why:
- The CPU default is a 1 M-parameter UNet (32-64-64 channels, one res block per level, no attention)
  trained for a few hundred steps with lr 1e-3: on a 2-core CPU the 35.7 M-parameter paper model
  cannot be trained in a tournament's minutes. ``preset="paper"`` restores the paper's architecture
  (128 x (1, 2, 2, 2) channels, 2 res blocks, self-attention at the 16 px resolution), lr 2e-4,
  dropout 0.1, EMA 0.9999 and 800k steps (override ``ddpm_steps`` for a shorter GPU run).
- Gradient-norm clipping at 1 and a linear lr warm-up (50 steps here, 5,000 in the paper) as in the
  DDPM code; the warm-up is short because CPU runs are only a few hundred steps long.
- A fine-tune checkpoint (``init``) brings its own architecture: the size params then only enter
  the cache key, they do not reshape the loaded network.
- The EMA decay warms up as ``min(decay, (1 + step) / (10 + step))`` (as diffusers' EMAModel does), so
  short CPU runs do not return weights that are mostly the random initialization.
- No horizontal flips: the raw pool is used as is (digits are not flip-symmetric).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

T_STEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02
DDPM_VERSION = "1"

PRESETS: dict[str, dict[str, Any]] = {
    # 1.06 M params at 3 channels; ~165 s for 400 steps at batch 64 and 32 px on the 2-core CPU.
    "cpu": dict(channels=(32, 64, 64), layers=1, attn_res=(), steps=400, batch_size=64, lr=1e-3,
                ema=0.995, dropout=0.0),
    # DDPM CIFAR-10 (Ho et al. 2020): ch 128 x (1, 2, 2, 2), 2 res blocks, attention at 16 px, 35.7 M params.
    "paper": dict(channels=(128, 256, 256, 256), layers=2, attn_res=(16,), steps=800_000, batch_size=128,
                  lr=2e-4, ema=0.9999, dropout=0.1),
}


@dataclass(frozen=True)
class DDPMConfig:
    channels: tuple[int, ...] = (32, 64, 64)
    layers: int = 1
    attn_res: tuple[int, ...] = ()  # feature-map sizes (px) whose UNet levels get self-attention
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    ema: float = 0.995
    dropout: float = 0.0
    warmup: int = 50
    seed: int = 0
    ckpt_every: int = 100

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> DDPMConfig:
        base = dict(PRESETS[preset])
        base.update({k: v for k, v in overrides.items() if v is not None})
        base["channels"] = tuple(int(c) for c in base["channels"])
        base["attn_res"] = tuple(sorted(int(r) for r in base["attn_res"]))
        return cls(**base)

    def key_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("ckpt_every")  # where checkpoints are written does not change the model
        return d


def parse_ints(text: str) -> tuple[int, ...]:
    """'32,64,64' -> (32, 64, 64); '' -> ()."""
    return tuple(int(c) for c in text.replace(" ", "").split(",") if c)


parse_channels = parse_ints


def check_size(cfg: DDPMConfig, size: int) -> None:
    """The UNet halves the image n-1 times: refuse sizes it cannot, in one line, before any compute."""
    from arena import ArenaError

    levels = len(cfg.channels)
    if size % (2 ** (levels - 1)) != 0:
        raise ArenaError(f"DDPM with {levels} levels needs images whose side is divisible by "
                         f"{2 ** (levels - 1)}; got {size} px (use fewer ddpm_channels entries)")


def build_unet(cfg: DDPMConfig, in_channels: int, size: int) -> torch.nn.Module:
    from diffusers import UNet2DModel

    check_size(cfg, size)
    n = len(cfg.channels)
    groups = math.gcd(*cfg.channels) if n > 1 else cfg.channels[0]
    groups = max(g for g in range(1, min(32, groups) + 1) if groups % g == 0)
    # Down block i works at size / 2^i, up block j at size / 2^(n-1-j): attention where that size is
    # listed (the DDPM CIFAR-10 model: 16 px).
    down = tuple("AttnDownBlock2D" if (size >> i) in cfg.attn_res else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if (size >> (n - 1 - j)) in cfg.attn_res else "UpBlock2D" for j in range(n))
    return UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=in_channels,
                       layers_per_block=cfg.layers, block_out_channels=cfg.channels,
                       down_block_types=down, up_block_types=up, norm_num_groups=groups,
                       dropout=cfg.dropout)


def scheduler() -> Any:
    """The diffusers DDPMScheduler this module's schedule is taken from (linear betas, T = 1000)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=T_STEPS, beta_start=BETA_START, beta_end=BETA_END,
                         beta_schedule="linear", prediction_type="epsilon", clip_sample=True)


def schedule(device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """DDPMScheduler's betas and the posterior quantities derived from them (float64, then float32).

    The reverse step is written out here rather than taken from ``DDPMScheduler.step`` because JCDP
    shifts the posterior mean by its guidance before the noise is added, which ``step`` does not expose.
    """
    betas = scheduler().betas.to(torch.float64)
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    out = {
        "betas": betas, "alphas": alphas, "abar": abar, "abar_prev": abar_prev, "post_var": post_var,
        # posterior q(x_{t-1} | x_t, x_0) mean = c0 * x0 + ct * x_t
        "c0": betas * abar_prev.sqrt() / (1.0 - abar),
        "ct": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        # the log-variance clipped as in DDPM/guided-diffusion: at t = 0 use the t = 1 value
        "post_var_clipped": torch.cat([post_var[1:2], post_var[1:]]),
        # DDPM's other fixed choice, sigma_t^2 = beta_t ("fixedlarge" in guided-diffusion, which also takes the
        # posterior variance at t = 0): the variance JCDP's reference sampler walks with
        "fixed_large_var": torch.cat([post_var[1:2], betas[1:]]),
    }
    return {k: v.float().to(device) for k, v in out.items()}


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def file_digest(path: str | os.PathLike) -> str:
    from arena import ArenaError

    h = hashlib.sha256()
    p = Path(path).expanduser()
    if not p.exists():
        raise ArenaError(f"DDPM init checkpoint '{path}' does not exist")
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        h.update(q.name.encode())
        with open(q, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _load_init(path: str, cfg: DDPMConfig, in_channels: int, size: int) -> torch.nn.Module:
    """A DDPM trained elsewhere to fine-tune from: a file saved by this module, or a diffusers folder."""
    from diffusers import UNet2DModel

    from arena import ArenaError

    p = Path(path).expanduser()
    if not p.exists():
        raise ArenaError(f"DDPM init checkpoint '{path}' does not exist")
    if p.is_dir():
        sub = p / "unet" if (p / "unet").is_dir() else p
        model = UNet2DModel.from_pretrained(sub)
    else:
        state = torch.load(p, map_location="cpu", weights_only=False)
        model = _from_arch(state["arch"])
        model.load_state_dict(state["ema"])
    if model.config.in_channels != in_channels:
        raise ArenaError(f"DDPM init checkpoint '{path}' has {model.config.in_channels} channels, "
                         f"the raw pool has {in_channels}")
    return model


_MEMO: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {}


def train_or_load(images: torch.Tensor, cfg: DDPMConfig, cache: Path, ctx: Any,
                  init: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The EMA UNet for this pool and config, trained now (resuming any checkpoint) or loaded.

    ``images`` is the uint8 raw pool (N x C x H x W); ``cache`` the final checkpoint path. Returns the
    model in eval mode on ``ctx.device`` and info (train seconds, loss at start and end, params).
    """
    key = str(cache)
    device = torch.device(ctx.device)
    if key in _MEMO:
        model, info = _MEMO[key]
        return model.to(device), dict(info, ddpm_cached=True)
    if cache.exists():
        return _load_final(cache, key, device)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with _locked(cache.with_name(cache.name + ".lock")):
        if cache.exists():  # another worker trained it while this one waited for the lock
            return _load_final(cache, key, device)
        return _train(images, cfg, cache, ctx, init, key, device)


def _load_final(cache: Path, key: str, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    state = torch.load(cache, map_location="cpu", weights_only=False)
    model = _from_arch(state["arch"])
    model.load_state_dict(state["ema"])
    info = dict(state["info"], ddpm_cached=True)
    model.eval().requires_grad_(False).to(device)
    _MEMO[key] = (model, info)
    return model, info


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes, so tournament workers that need the same DDPM train it once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, at worst two workers train the same model
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _train(images: torch.Tensor, cfg: DDPMConfig, cache: Path, ctx: Any, init: str | None, key: str,
           device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    _, c, h, _ = images.shape
    partial = cache.with_name(cache.name + ".partial")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = _load_init(init, cfg, c, h) if init else build_unet(cfg, c, h)
    model.to(device).train()
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    step, losses, spent = 0, [], 0.0
    if partial.exists():
        st = torch.load(partial, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        ema = {k: v.to(device) for k, v in st["ema"].items()}
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        step, losses, spent = st["step"], st["losses"], st["seconds"]
    ema = {k: v.to(device) for k, v in ema.items()}
    sch = schedule(device)
    data = images.to(device)
    t0 = time.time()
    task = ctx.progress.task("jcdp: train DDPM on raw pool", total=cfg.steps)
    if step:
        task.advance(step)

    def checkpoint(final: bool) -> None:
        nonlocal t0, spent
        spent += time.time() - t0
        t0 = time.time()
        if final:
            return
        _atomic_save({"model": model.state_dict(), "ema": {k: v.cpu() for k, v in ema.items()},
                      "opt": opt.state_dict(), "gen": gen.get_state(), "step": step, "losses": losses,
                      "seconds": spent}, partial)

    rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        while step < cfg.steps:
            # Dropout draws from the global RNG: seed it per step so a resumed run matches an unbroken one.
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            loss = _train_step(model, opt, data, sch, gen, cfg, step, device)
            with torch.no_grad():
                decay = min(cfg.ema, (1 + step) / (10 + step))
                for k, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k].mul_(decay).add_(v.detach().float(), alpha=1 - decay)
                    else:
                        ema[k].copy_(v)
            losses.append(loss)
            step += 1
            task.advance(1, loss=loss)
            if step % cfg.ckpt_every == 0 and step < cfg.steps:
                checkpoint(False)
    checkpoint(True)
    task.close()
    model.load_state_dict(ema)
    model.eval().requires_grad_(False)
    k = max(1, len(losses) // 10)
    info = {
        "ddpm_train_s": round(spent, 2), "ddpm_steps": cfg.steps,
        "ddpm_loss_first": sum(losses[:k]) / k if losses else float("nan"),
        "ddpm_loss": sum(losses[-k:]) / k if losses else float("nan"),
        "ddpm_params": sum(p.numel() for p in model.parameters()),
        "ddpm_cached": False,
    }
    _atomic_save({"config": asdict(cfg), "in_channels": c, "arch": dict(model.config),
                  "ema": {kk: v.cpu() for kk, v in model.state_dict().items()}, "info": info,
                  "losses": losses}, cache)
    if partial.exists():
        partial.unlink()
    _MEMO[key] = (model, info)
    return model, info


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, data: torch.Tensor,
                sch: dict[str, torch.Tensor], gen: torch.Generator, cfg: DDPMConfig, step: int,
                device: torch.device) -> float:
    """One step of Ho et al.'s Algorithm 1 on a batch of the pool; returns the loss."""
    n = data.shape[0]
    idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
    x0 = data[idx.to(device)].float().div(127.5).sub(1.0)
    t = torch.randint(0, T_STEPS, (x0.shape[0],), generator=gen).to(device)
    eps = torch.randn(x0.shape, generator=gen).to(device)
    ab = sch["abar"][t].view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    for g in opt.param_groups:
        g["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    with _autocast(device):
        pred = model(xt, t).sample
    loss = F.mse_loss(pred.float(), eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def _from_arch(arch: dict[str, Any]) -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel.from_config(arch)


def cache_name(pool_fingerprint: str, cfg: DDPMConfig, init: str | None) -> str:
    """Cache file name: pool hash + DDPM params + init checkpoint hash + version."""
    key = {"pool": pool_fingerprint, "cfg": cfg.key_dict(), "init": file_digest(init) if init else None,
           "version": DDPM_VERSION, "t": T_STEPS, "betas": [BETA_START, BETA_END]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"ddpm-{pool_fingerprint}-{digest}.pt"


__all__ = ["DDPMConfig", "PRESETS", "build_unet", "cache_name", "parse_channels", "replace", "schedule",
           "train_or_load"]


def shared_cache_path(ctx: Any, name: str) -> Path:
    """Where a DDPM lives so that every exploiter module using this file finds the same one.

    ``ctx.cache_path`` is private to one plugin's code hash (the tournament gives each its own directory), so
    ``jcdp`` and ``diffpure`` would each train the same model there. The DDPM depends only on this module's
    code (plus the pool and config in ``name``), so it is kept beside those directories in one named by
    this module's own code hash: an edit of ``ddpm.py`` still starts from an empty cache.
    """
    from arena.codehash import module_hash

    own = ctx.cache_path(name).parent
    shared = own.parent / f"ddpm-shared-{module_hash(__name__, Path(__file__))}"
    shared.mkdir(parents=True, exist_ok=True)
    return shared / name
