"""UEraser (Qin et al., "Learning the Unlearnable: Adversarial Augmentations Suppress Unlearnable Example
Attacks", ICCV-W 2023; code lafeat/ueraser, also APBench's ``defense/ueraser.py``): train the victim on
heavily augmented images, and during the first ``repeat_epochs`` epochs draw ``repeats`` (K) augmentations of
every image and train on the one with the largest loss, so the shortcut the protection plants never gets
an easy sample to latch onto.

Algorithm (per training batch x, targets y, after the base crop+flip):

1. augment: plasma-fractal brightness (p 0.5, roughness U(0.3, 0.7), intensity U(0.5, 1)), plasma-fractal
   contrast (p 0.5, roughness U(0.3, 0.7)), channel shuffle (p 0.5), then one TrivialAugment op;
2. epoch < ``repeat_epochs``: do step 1 K times, take per-image cross-entropy of every copy with the
   current model (train mode, one forward per copy as the reference does), keep the max-loss copy of each
   image; later epochs: K = 1 (just step 1);
3. the ordinary SGD step on the kept images, so the update minimizes the mean of the per-image max losses,
   the reference's ``mean(max_k CE)``.

Presets (``preset``; ``repeats`` and ``repeat_epochs`` override them), from APBench's ``--repeat_epoch``
("0 for -lite / 50 for UEraser / 300 for -max") and the paper's K = 5: ``lite`` K = 1 throughout,
``standard`` K = 5 for 50 epochs, ``max`` K = 5 for 300 epochs (every epoch of a shorter recipe).
The default is ``max``, the variant APBench tabulates. The papers train 200 epochs (UEraser) to 300
(UEraser-Max); ``epochs`` sets the victim's epochs for the cell, otherwise the tournament recipe's stand.

Augmentation semantics follow kornia (the reference's library), reimplemented in torch: kornia needs the
compiled ``kornia-rs`` wheel, so it is not a dependency. Plasma maps are kornia's diamond-square variant
(each new node mixes the mean of its neighbours with a U(0, 1) draw by the weight roughness^level, so maps
stay in [0, 1]), one map per channel; brightness is ``clamp(x + intensity (2 map - 1))``, contrast
``clamp((x - 0.5) 4 map + 0.5)``. TrivialAugment uses kornia's default policy and ranges: auto-contrast,
equalize, rotate U(-30, 30) degrees, posterize to floor(U(0, 4)) bits, solarize at threshold U(0, 1),
contrast ``x * U(0.1, 1.9)`` and brightness ``x + U(0.1, 1.9) - 1`` (kornia's, not PIL's, definitions),
sharpness U(0.1, 1.9) (PIL's 3x3 smoothing kernel), shear x / y by ``U(-0.3, 0.3) * 180`` degrees,
translate x / y by U(-0.5, 0.5) of the side; geometric ops fill with black.

Differences from the reference, and why:
- kornia's TrivialAugment picks one op per call for the whole batch; here every image draws its own op
  (TrivialAugment's definition, and K copies of one image then differ in more than magnitude).
- The K candidate forwards run under ``no_grad`` and the gradient comes from one more forward on the kept
  images, instead of backpropagating through the K graphs; the loss value is the same, BatchNorm batch
  statistics of that last forward are those of the kept batch rather than of each round's batch. BN
  running statistics are restored after the candidate forwards, so they see one update per step.
- ``plasma_p`` (default 0.5) is the UEraser authors' plasma probability (lafeat/ueraser, whose comments say it
  may be raised for stronger augmentation). APBench's copy used 0.5 until 2023-11-21 (commit ca7e688); its
  HEAD uses 1.0 for ``UEraser`` and 0.8 for ``UEraser_jpeg``, so APBench's tabulated numbers may come from
  either: ``plasma_p: 1.0`` is today's APBench.
- No JPEG variant is offered. APBench's ``UEraser_jpeg`` (used for TAP and AR) discarded its JPEG copy in its
  first version; since 2023-11-16 (d956737) it augments the JPEG'd image, and lafeat/ueraser's
  ``UEraserJPEG`` applies JPEG quality 10 after the augmentations. The standalone repo's "standard" run repeats
  60 epochs of its 200 (``aa_epochs = 60``), where APBench's help text says 50; the ``standard`` preset
  follows APBench.
- Randomness comes from the trainer's seeded generator (reproducible on the CPU).

Composability: combines with every other exploiter. It is a ``perturb_batch`` change, so it runs after
every ``transform_batch`` (CutMix/MixUp soft targets work: the max-loss selection uses them); with
``adversarial-training`` in the same cell the order of the two attacks is the order of the combination.
Cost: (K + 1) forwards and one backward per step during the repeat epochs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from arena import Exploiter, Param, ParamSpec, TrainingMod, hookimpl
from arena.trainer import use_amp

PRESETS: dict[str, tuple[int, int]] = {"lite": (1, 0), "standard": (5, 50), "max": (5, 300)}  # (K, epochs)


def _rand(shape: tuple[int, ...] | int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    shape = (shape,) if isinstance(shape, int) else shape
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * _rand(n, gen, device)


# --- plasma fractals -------------------------------------------------------------------------------

def plasma(n: int, c: int, h: int, w: int, roughness: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """n x c x h x w diamond-square maps in [0, 1]; ``roughness`` (n,) sets how fast detail fades."""
    device = roughness.device
    side = 2 ** math.ceil(math.log2(max(h, w, 3) - 1)) + 1
    levels = int(math.log2(side - 1))
    b = n * c
    grid = _rand((b, 1, 2, 2), gen, device)
    r = roughness.repeat_interleave(c).view(b, 1, 1, 1)
    s = torch.ones_like(r)
    for _ in range(levels):
        s = s * r
        m = 2 * (grid.shape[-1] - 1) + 1
        new = torch.zeros((b, 1, m, m), device=device)
        new[..., ::2, ::2] = grid
        odd = torch.arange(m, device=device) % 2
        d_mask = (odd[:, None] * odd[None, :]).float()
        s_mask = ((odd[:, None] + odd[None, :]) == 1).float()
        d = _neighbour_sum(new, diagonal=True) / 4  # odd-odd nodes are interior: always four corners
        new = new + d_mask * ((1 - s) * d + s * _rand((b, 1, m, m), gen, device))
        # edge nodes have three neighbours: average over those that exist
        count = _neighbour_sum(torch.ones((1, 1, m, m), device=device), diagonal=False)
        sq = _neighbour_sum(new, diagonal=False) / count
        new = new + s_mask * ((1 - s) * sq + s * _rand((b, 1, m, m), gen, device))
        grid = new
    return grid[..., :h, :w].reshape(n, c, h, w)


def _neighbour_sum(x: torch.Tensor, diagonal: bool) -> torch.Tensor:
    """Sum of each node's four diagonal (or edge) neighbours, zero outside: a fixed 3x3 stencil written as
    shifted adds, because a one-channel convolution ran 5x slower on a CPU and plasma maps dominated the cost
    of the whole augmentation."""
    p = F.pad(x, (1, 1, 1, 1))
    if diagonal:
        return p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], a, b)


def plasma_brightness(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    n, c, h, w = x.shape
    rough = _uniform(n, 0.3, 0.7, gen, x.device)
    inten = _uniform(n, 0.5, 1.0, gen, x.device).view(-1, 1, 1, 1)
    out = (x + inten * (2 * plasma(n, c, h, w, rough, gen) - 1)).clamp(0, 1)
    return _where(_rand(n, gen, x.device) < p, out, x)


def plasma_contrast(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    n, c, h, w = x.shape
    rough = _uniform(n, 0.3, 0.7, gen, x.device)
    out = ((x - 0.5) * 4 * plasma(n, c, h, w, rough, gen) + 0.5).clamp(0, 1)
    return _where(_rand(n, gen, x.device) < p, out, x)


def channel_shuffle(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    n, c = x.shape[:2]
    perm = _rand((n, c), gen, x.device).argsort(1)
    out = x.gather(1, perm[:, :, None, None].expand_as(x))
    return _where(_rand(n, gen, x.device) < p, out, x)


# --- TrivialAugment (kornia's default policy) ---------------------------------------------------------

def _affine(x: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """Warp with per-image 2 x 3 matrices in normalized coordinates (output -> input), black fill."""
    grid = F.affine_grid(mats, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _eye(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(2, 3, device=device).repeat(n, 1, 1)


def _sharpness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device) / 13
    smooth = F.conv2d(x, k.view(1, 1, 3, 3).repeat(c, 1, 1, 1), groups=c).clamp(0, 1)
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = smooth  # borders keep the input, as PIL's ImageEnhance does
    return (blurred + f * (x - blurred)).clamp(0, 1)


def _op(name: str, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One TrivialAugment op on a float [0, 1] batch with per-image magnitudes ``v`` (already in range)."""
    n = x.shape[0]
    f = v.view(-1, 1, 1, 1)
    if name == "auto_contrast":
        lo = x.amin((2, 3), keepdim=True)
        hi = x.amax((2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), x)
    if name == "equalize":
        return TF.equalize(x.mul(255).round().to(torch.uint8)).float().div(255)
    if name in ("posterize",):
        bits = v.floor().long().clamp(0, 8)
        mask = ((0xFF << (8 - bits)) & 0xFF).to(torch.uint8).view(-1, 1, 1, 1)
        return (x.mul(255).round().to(torch.uint8) & mask).float().div(255)
    if name == "solarize":
        return torch.where(x >= f, 1 - x, x)
    if name == "contrast":
        return (x * f).clamp(0, 1)
    if name == "brightness":
        return (x + f - 1).clamp(0, 1)
    if name == "sharpness":
        return _sharpness(x, f)
    m = _eye(n, x.device)
    if name == "rotate":
        a = torch.deg2rad(v)
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    elif name == "shear_x":
        m[:, 0, 1] = torch.tan(torch.deg2rad(v * 180))
    elif name == "shear_y":
        m[:, 1, 0] = torch.tan(torch.deg2rad(v * 180))
    elif name == "translate_x":
        m[:, 0, 2] = 2 * v
    elif name == "translate_y":
        m[:, 1, 2] = 2 * v
    else:
        raise ValueError(f"unknown TrivialAugment op '{name}'")
    return _affine(x, m).clamp(0, 1)


#: kornia ``TrivialAugment`` default policy: (op, low, high) of the per-image magnitude.
TRIVIAL_POLICY: tuple[tuple[str, float, float], ...] = (
    ("auto_contrast", 0.0, 1.0), ("equalize", 0.0, 1.0), ("rotate", -30.0, 30.0), ("posterize", 0.0, 4.0),
    ("solarize", 0.0, 1.0), ("contrast", 0.1, 1.9), ("brightness", 0.1, 1.9), ("sharpness", 0.1, 1.9),
    ("shear_x", -0.3, 0.3), ("shear_y", -0.3, 0.3), ("translate_x", -0.5, 0.5), ("translate_y", -0.5, 0.5),
)


def trivial_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One policy op per image, with its own magnitude; images sharing an op run as one batch."""
    n = x.shape[0]
    which = (_rand(n, gen, x.device) * len(TRIVIAL_POLICY)).long().clamp_(max=len(TRIVIAL_POLICY) - 1)
    mags = _rand(n, gen, x.device)
    out = x.clone()
    for i, (name, lo, hi) in enumerate(TRIVIAL_POLICY):
        idx = (which == i).nonzero().flatten()
        if idx.numel():
            out[idx] = _op(name, x[idx], lo + (hi - lo) * mags[idx])
    return out


def ueraser_augment(x: torch.Tensor, gen: torch.Generator, plasma_p: float = 0.5) -> torch.Tensor:
    """The UEraser pipeline on a float [0, 1] batch, independent draws per image."""
    x = plasma_brightness(x, gen, plasma_p)
    x = plasma_contrast(x, gen, plasma_p)
    x = channel_shuffle(x, gen)
    return trivial_augment(x, gen)


# --- the max-loss selection -------------------------------------------------------------------------

def select_max_loss(candidates: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """K x N x ... candidates and their K x N losses -> the N candidates with the largest loss per image."""
    best = losses.argmax(0)
    return candidates[best, torch.arange(candidates.shape[1], device=candidates.device)]


@contextlib.contextmanager
def _bn_stats_kept(model: torch.nn.Module) -> Iterator[None]:
    """Forwards in train mode (batch statistics, as the reference) that leave the running statistics alone."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in bns]
    try:
        yield
    finally:
        for m, st in zip(bns, saved):
            m.load_state_dict(st)


class UEraserMod(TrainingMod):
    def __init__(self, repeats: int, repeat_epochs: int, epochs: int | None, plasma_p: float = 0.5) -> None:
        self.repeats, self.repeat_epochs, self.epochs, self.plasma_p = repeats, repeat_epochs, epochs, plasma_p
        self.epoch = 0
        self.amp_flag = "off"

    def configure(self, recipe: Any) -> Any:
        self.amp_flag = getattr(recipe, "amp", "off")
        return replace(recipe, epochs=self.epochs) if self.epochs else recipe

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def perturb_batch(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      gen: torch.Generator) -> torch.Tensor:
        k = self.repeats if self.epoch < self.repeat_epochs else 1
        if k <= 1:
            return ueraser_augment(x, gen, self.plasma_p)
        cands = torch.stack([ueraser_augment(x, gen, self.plasma_p) for _ in range(k)])
        amp = use_amp(self.amp_flag, x.device)
        losses = torch.empty((k, x.shape[0]), device=x.device)
        with torch.no_grad(), _bn_stats_kept(model):
            for i in range(k):
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                    out = model(cands[i])
                losses[i] = F.cross_entropy(out.float(), y, reduction="none")
        return select_max_loss(cands, losses)


class UEraser(Exploiter):
    name = "ueraser"
    summary = "UEraser: train on the max-loss of K heavy augmentations per image (Lite / standard / Max)"
    version = "1"
    params = ParamSpec((
        Param("preset", str, "max", "lite: K=1; standard: K=5 for 50 epochs; max: K=5 for 300 epochs",
              choices=tuple(PRESETS)),
        Param("repeats", int, None, "augmented copies K per image (default: from preset)", low=1, high=64,
              optional=True),
        Param("repeat_epochs", int, None, "epochs that use the max-loss of K copies (default: from preset)",
              low=0, optional=True),
        Param("epochs", int, None, "victim training epochs for this cell (default: the tournament recipe's; "
              "the paper trains 200-300)", low=1, optional=True),
        Param("plasma_p", float, 0.5, "probability of each plasma op, brightness and contrast (the authors' "
              "0.5; APBench's current UEraser 1.0)", low=0.0, high=1.0),
    ))
    check_params: ClassVar[dict[str, Any]] = {"preset": "standard", "repeats": 2, "repeat_epochs": 1}

    def training_mod(self, ctx: Any) -> TrainingMod:
        k, e = PRESETS[self.p["preset"]]
        k = self.p["repeats"] if self.p["repeats"] is not None else k
        e = self.p["repeat_epochs"] if self.p["repeat_epochs"] is not None else e
        return UEraserMod(k, e, self.p["epochs"], self.p["plasma_p"])


@hookimpl
def arena_register_exploiters(register) -> None:
    register(UEraser)
