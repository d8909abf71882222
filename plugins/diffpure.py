"""AVATAR-style diffusion purification (Dolatabadi, Erfani & Leckie, "The Devil's Advocate: Shattering the
Illusion of Unexploitable Data using Diffusion Models", 2023): run every protected train image part of the way
into a diffusion model's forward process and back with the unconditional reverse process (DiffPure, Nie et
al. 2022), then train the victim on the result. The forward noise drowns the small protective perturbation;
the reverse walk, which only knows the clean data distribution, restores image content but not the noise.

Algorithm (per protected image x in [0, 255]; y = x / 127.5 - 1)::

    x_t* = sqrt(abar_t*) y + sqrt(1 - abar_t*) eps                       # t* = t_star of T = 1000
    for t = t* - 1 ... 0:                                                 # DDPM ancestral sampling
        x0_hat  = clamp((x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t), -1, 1)
        x_{t-1} = posterior mean of q(x_{t-1} | x_t, x0_hat) + sigma_t z  (no z at t = 0)
    purified = round((x_{-1} + 1) * 127.5)

The DDPM is the arena's (``plugins/ddpm.py``), trained on the attacker's raw pool only, with the same params
and the same cache file as ``jcdp``: ``ddpm.shared_cache_path`` keys it by pool content, DDPM config and the
code hash of ``ddpm.py``, so the two exploiters train one model per pool (``jcdp`` uses it once it looks there
too; until then each trains its own copy).

Defaults and differences from the reference, and why:
- AVATAR uses DiffPure's score-SDE (VP-SDE, beta 0.1-20, continuous time) model trained on clean CIFAR-10
  and its SDE solver. The VP-SDE at t* in [0, 1] is the DDPM chain at t* x 1000 with the same linear betas
  (1e-4 ... 0.02), and DDPM ancestral sampling is a discretization of the same reverse SDE, so the
  arena's DDPM stands in for it. The default depth ``t_star = 100`` is DiffPure's CIFAR-10 setting
  (t* = 0.1), and the one AVATAR's authors released CIFAR-10 data for (hmdolatabadi/AVATAR README:
  "denoised ... for 100 steps"; its argparse default 400 is DiffPure's generic one). APBench's AVATAR runs
  t = 60, one param change; APBench also feeds the model ``2x`` for x in [0, 1] and halves the output where
  DiffPure and AVATAR map to [-1, 1] (``(x - 0.5) * 2``), so its AVATAR column is not a clean reference.
- The diffusion model is trained on the raw pool the arena gives exploiters, not on the clean data set the
  paper's model saw (this threat model does not give the attacker that); ``ddpm_init`` fine-tunes one from
  another data set as in ``jcdp``.
- One purification pass (AVATAR's), no guidance (``jcdp`` is the guided method).
- Noise comes from a CPU generator seeded by the cell seed: the same images on every device for a seed.

Composability: a data-level purifier; combines with every exploiter (+ ``adversarial-training``, + any
augmentation, + ``early-stopping``). Cost: ``t_star`` UNet evaluations per image plus the DDPM training.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from arena import ArenaError, Exploiter, ImageSet, Param, ParamSpec, hookimpl

from . import ddpm
from .jcdp import _DDPM_PARAMS, JCDP

# the params that define the DDPM, exactly as jcdp declares them: equal values give the same model file
_SHARED = tuple(p for p in _DDPM_PARAMS if p.name == "preset" or p.name.startswith("ddpm_") or p.name == "ckpt_every")


@torch.no_grad()
def diffuse_denoise(unet: torch.nn.Module, y: torch.Tensor, t_star: int, gen: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    """Forward-diffuse ``y`` (in [-1, 1]) to step ``t_star`` and run the DDPM reverse chain back to 0."""
    s = ddpm.schedule(device)

    def randn() -> torch.Tensor:
        return torch.randn(y.shape, generator=gen).to(device)

    ab = s["abar"][t_star - 1]
    x = ab.sqrt() * y + (1 - ab).sqrt() * randn()
    for t in range(t_star - 1, -1, -1):
        tt = torch.full((y.shape[0],), t, device=device, dtype=torch.long)
        with ddpm._autocast(device):
            eps = unet(x, tt).sample.float()
        abt = s["abar"][t]
        x0_hat = ((x - (1 - abt).sqrt() * eps) / abt.sqrt()).clamp(-1, 1)
        mean = s["c0"][t] * x0_hat + s["ct"][t] * x
        x = mean + (s["post_var"][t].sqrt() * randn() if t > 0 else 0.0)
    return x.clamp(-1, 1)


class DiffPure(Exploiter):
    name = "diffpure"
    summary = "AVATAR: diffuse each protected image to t* and denoise it with the raw-pool DDPM"
    uses_raw_pool: ClassVar[bool] = True
    version = "1"
    params = ParamSpec(_SHARED + (
        Param("t_star", int, 100, "diffusion depth t* in steps of 1000 (DiffPure CIFAR-10: 100; APBench: 60)",
              low=1, high=1000),
        Param("batch_size", int, 256, "images purified at once", low=1),
    ))
    check_params: ClassVar[dict[str, Any]] = {"ddpm_channels": "8,16", "ddpm_steps": 4, "ddpm_batch_size": 8,
                                              "t_star": 3}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.last_info: dict[str, Any] = {}

    def ddpm_config(self) -> ddpm.DDPMConfig:
        return JCDP.ddpm_config(self)  # type: ignore[arg-type]  # the same mapping of params to config

    def purify(self, protected: ImageSet, raw: ImageSet | None, ctx: Any) -> ImageSet:
        if raw is None or len(raw) == 0:
            raise ArenaError(f"exploiter '{self.name}' needs a raw pool to train its DDPM (raw_fraction > 0)")
        if raw.shape != protected.shape:
            raise ArenaError(f"exploiter '{self.name}': raw pool images {raw.shape} differ from the protected "
                             f"images {protected.shape}")
        cfg = self.ddpm_config()
        init = self.p["ddpm_init"]
        path = ddpm.shared_cache_path(ctx, ddpm.cache_name(raw.fingerprint(), cfg, init))
        unet, info = ddpm.train_or_load(raw.images, cfg, path, ctx, init=init)
        device = torch.device(ctx.device)
        gen = ctx.generator(offset=4099, device="cpu")
        out = torch.empty_like(protected.images)
        bs, n = self.p["batch_size"], len(protected)
        task = ctx.progress.task(f"{self.name}: purify", total=n)
        for i in range(0, n, bs):
            y = protected.images[i : i + bs].to(device).float().div(127.5).sub(1.0)
            x = diffuse_denoise(unet, y, self.p["t_star"], gen, device)
            out[i : i + bs] = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
            task.advance(y.shape[0])
        task.close()
        self.last_info = {k: info[k] for k in ("ddpm_train_s", "ddpm_loss", "ddpm_steps", "ddpm_params",
                                               "ddpm_cached") if k in info}
        return protected.with_images(out, origin=f"purified:{self.name}")


@hookimpl
def arena_register_exploiters(register) -> None:
    register(DiffPure)
