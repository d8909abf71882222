"""Training-time augmentations as exploiters: CutOut, MixUp, CutMix and AutoAugment, each its own name.

All four change the victim's training step through ``TrainingMod.transform_batch`` and run on top of
the base recipe's random crop+flip, batched on the device, with randomness from the trainer's seeded
generator (so a cell is reproducible on the CPU). The protection noise is already in the stored
images, so the order is ``augment(x + delta)``, as METHODS.md requires.

- ``cutout`` (DeVries & Taylor, 2017): per image, a ``size`` x ``size`` square centred at a uniformly
  random pixel (clipped at the border) is set to 0. Reference: one hole of 16 px on CIFAR-10.
  Difference: the reference zeroes *normalized* pixels (the data-set mean colour); the arena does not
  normalize, so the hole is black.
- ``mixup`` (Zhang et al., ICLR 2018): ``lam ~ Beta(alpha, alpha)`` once per batch and a random
  pairing ``perm``; ``x <- lam x + (1 - lam) x[perm]``, targets ``lam y + (1 - lam) y[perm]`` as N x K
  soft targets. Cross-entropy is linear in the target, so this equals the reference's
  ``lam CE(f(x), y_a) + (1 - lam) CE(f(x), y_b)``.
- ``cutmix`` (Yun et al., ICCV 2019): with probability ``prob`` per batch, ``lam ~ Beta(alpha, alpha)``,
  a box of side ratio ``sqrt(1 - lam)`` at a uniform centre (clipped, the same box for the whole batch as
  in the reference) is pasted from ``x[perm]``; ``lam`` is recomputed from the clipped box area. The
  reference's CIFAR command uses ``--beta 1.0 --cutmix_prob 0.5``: those are the defaults.
- ``autoaugment`` (Cubuk et al., CVPR 2019): torchvision's CIFAR-10 policy (25 sub-policies of two ops,
  the same probabilities, magnitude bins and signs as ``torchvision.transforms.v2.AutoAugment``); it
  stands in for Fast AutoAugment, which ConfounderGAN reports. torchvision's transform draws one
  sub-policy per *call*, so on a batch tensor every image would get the same ops; here every image draws
  its own sub-policy, op coin flips and signs, images are grouped by (op, magnitude, sign) for each of the
  two op slots, and each group goes through ``torchvision.transforms.v2.functional`` as one uint8 batch
  tensor. Slot 1 runs after slot 0 for every image, so each image sees its ops in policy order.
  Order (issue 15): the policy runs **before** the recipe's crop+flip (``order="first"``, default), as in
  EMN's data pipeline and Fast AutoAugment's own (``transforms.insert(0, Augmentation(policy))``): the
  padding a crop brings in stays black instead of being inverted, contrast-shifted or sheared by the
  policy. ``order="after-crop-flip"`` keeps the earlier order. Other augmentations still follow crop+flip.

MixUp's and CutMix's soft targets are N x K float rows summing to 1 (K from ``TrainingMod.num_classes``,
which the trainer sets); targets that arrive already soft (another mixing exploiter before this one) are
mixed as they are. Beta draws use NumPy seeded from the trainer's generator, because torch's Beta/Gamma
samplers take no generator.

Composability: every augmentation composes with every other exploiter. Sensible cells: an augmentation
+ ``adversarial-training`` (the attack then targets the augmented batch and, for MixUp/CutMix, the soft
targets), an augmentation + a data-level purifier (ISS, filters, JCDP), anything + ``early-stopping``,
and ``autoaugment`` + ``cutout`` (the usual CIFAR AutoAugment recipe). ``mixup`` + ``cutmix`` runs but
stacks two mixings, which no paper evaluates. The same augmentation twice in one combination is
refused by the arena (one-line error).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnF
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from arena import Exploiter, Param, ParamSpec, TrainingMod, hookimpl


def _randint(high: int, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=gen, device=gen.device).to(device)


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device).to(device)


def _beta(alpha: float, gen: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw, reproducible from the torch generator."""
    if alpha <= 0:
        return 1.0
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def soft_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 labels -> one-hot float rows; soft rows pass through."""
    if y.dim() == 2:
        return y.float()
    if num_classes <= 0:
        num_classes = int(y.max()) + 1
    return nnF.one_hot(y, num_classes).float()


# --- CutOut --------------------------------------------------------------------------------------

def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image, centred at a random pixel, clipped at the border."""
    n, _, h, w = x.shape
    cy, cx = _randint(h, n, gen, x.device), _randint(w, n, gen, x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_y = (rows >= (cy - size // 2)[:, None]) & (rows < (cy + size // 2 + size % 2)[:, None])  # n x h
    in_x = (cols >= (cx - size // 2)[:, None]) & (cols < (cx + size // 2 + size % 2)[:, None])  # n x w
    hole = in_y[:, :, None] & in_x[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)


class CutoutMod(TrainingMod):
    def __init__(self, size: int) -> None:
        self.size = size

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        return cutout(x, self.size, gen), y


class Cutout(Exploiter):
    name = "cutout"
    summary = "CutOut: one random black square per training image"
    params = ParamSpec((Param("size", int, 16, "side of the square in pixels (paper: 16 on 32 px images)", low=1),))

    def training_mod(self, ctx: Any) -> TrainingMod:
        return CutoutMod(self.p["size"])


# --- MixUp ---------------------------------------------------------------------------------------

class MixupMod(TrainingMod):
    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        lam = _beta(self.alpha, gen)
        perm = torch.randperm(x.shape[0], generator=gen, device=gen.device).to(x.device)
        t = soft_targets(y, self.num_classes)
        return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]


class Mixup(Exploiter):
    name = "mixup"
    summary = "MixUp: convex combinations of image pairs and their labels"
    params = ParamSpec((Param("alpha", float, 1.0, "Beta(alpha, alpha) mixing weights (paper CIFAR: 1.0)",
                              low=0.0, high=100.0),))

    def training_mod(self, ctx: Any) -> TrainingMod:
        return MixupMod(self.p["alpha"])


# --- CutMix --------------------------------------------------------------------------------------

class CutmixMod(TrainingMod):
    def __init__(self, alpha: float, prob: float) -> None:
        self.alpha, self.prob = alpha, prob

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        t = soft_targets(y, self.num_classes)
        # Draw everything every batch so the random stream does not depend on the coin flip's outcome.
        coin = float(torch.rand((), generator=gen, device=gen.device))
        lam = _beta(self.alpha, gen)
        perm = torch.randperm(x.shape[0], generator=gen, device=gen.device).to(x.device)
        _, _, h, w = x.shape
        centre = torch.rand(2, generator=gen, device=gen.device).cpu()
        if self.alpha <= 0 or coin >= self.prob:
            return x, t
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = min(int(centre[0] * h), h - 1), min(int(centre[1] * w), w - 1)
        y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        out = x.clone()
        out[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
        lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
        return out, lam * t + (1 - lam) * t[perm]


class Cutmix(Exploiter):
    name = "cutmix"
    summary = "CutMix: paste a box from another image, mix labels by area"
    params = ParamSpec((
        Param("alpha", float, 1.0, "Beta(alpha, alpha) for the kept area (reference --beta 1.0)", low=0.0, high=100.0),
        Param("prob", float, 0.5, "probability a batch is mixed (reference CIFAR --cutmix_prob 0.5)",
              low=0.0, high=1.0),
    ))

    def training_mod(self, ctx: Any) -> TrainingMod:
        return CutmixMod(self.p["alpha"], self.p["prob"])


# --- AutoAugment ---------------------------------------------------------------------------------

# torchvision.transforms.AutoAugmentPolicy.CIFAR10, copied so a torchvision refactor of private
# attributes cannot change the policy silently: (op, probability, magnitude bin).
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

# Magnitude of bin b (of 10) and whether the op takes a random sign: torchvision's _AUGMENTATION_SPACE.
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}


def _magnitude(op: str, b: int | None, h: int, w: int) -> float:
    if b is None:
        return 0.0
    top = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150.0 / 331.0 * w, "TranslateY": 150.0 / 331.0 * h,
           "Rotate": 30.0, "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9}
    if op in top:
        return float(torch.linspace(0.0, top[op], 10)[b])
    if op == "Posterize":
        return float((8 - (torch.arange(10) / ((10 - 1) / 4)).round().int())[b])
    if op == "Solarize":
        return float(torch.linspace(1.0, 0.0, 10)[b])
    raise ValueError(op)


def apply_op(img: torch.Tensor, op: str, mag: float) -> torch.Tensor:
    """One AutoAugment op on a uint8 batch, exactly as torchvision's AutoAugment applies it."""
    nearest, fill = InterpolationMode.NEAREST, None
    if op == "ShearX":
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(mag)), 0.0],
                         interpolation=nearest, fill=fill, center=[0, 0])
    if op == "ShearY":
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(mag))],
                         interpolation=nearest, fill=fill, center=[0, 0])
    if op == "TranslateX":
        return TF.affine(img, angle=0.0, translate=[int(mag), 0], scale=1.0, shear=[0.0, 0.0],
                         interpolation=nearest, fill=fill)
    if op == "TranslateY":
        return TF.affine(img, angle=0.0, translate=[0, int(mag)], scale=1.0, shear=[0.0, 0.0],
                         interpolation=nearest, fill=fill)
    if op == "Rotate":
        return TF.rotate(img, angle=mag, interpolation=nearest, fill=fill)
    if op == "Brightness":
        return TF.adjust_brightness(img, brightness_factor=1.0 + mag)
    if op == "Color":
        return TF.adjust_saturation(img, saturation_factor=1.0 + mag)
    if op == "Contrast":
        return TF.adjust_contrast(img, contrast_factor=1.0 + mag)
    if op == "Sharpness":
        return TF.adjust_sharpness(img, sharpness_factor=1.0 + mag)
    if op == "Posterize":
        return TF.posterize(img, bits=int(mag))
    if op == "Solarize":
        return TF.solarize(img, threshold=255.0 * mag)
    if op == "AutoContrast":
        return TF.autocontrast(img)
    if op == "Equalize":
        return TF.equalize(img)
    if op == "Invert":
        return TF.invert(img)
    raise ValueError(f"unknown AutoAugment op {op!r}")


def autoaugment(x: torch.Tensor, gen: torch.Generator, policy=CIFAR10_POLICY) -> torch.Tensor:
    """Per-image AutoAugment on a float batch in [0,1]: every image draws its own sub-policy."""
    n, _, h, w = x.shape
    k = len(policy)
    # One draw of all randomness, then one transfer to the CPU to plan the groups.
    which = torch.randint(0, k, (n,), generator=gen, device=gen.device).cpu()
    coins = torch.rand((n, 2), generator=gen, device=gen.device).cpu()
    signs = torch.rand((n, 2), generator=gen, device=gen.device).cpu() < 0.5
    img = x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    for slot in range(2):
        # Group by (op, signed magnitude) with tensor masks: no per-image Python.
        groups: dict[tuple[str, float], torch.Tensor] = {}
        for p, sub in enumerate(policy):
            op, prob, b = sub[slot]
            hit = (which == p) & (coins[:, slot] <= prob)
            if not bool(hit.any()):
                continue
            mag = _magnitude(op, b, h, w)
            parts = [(mag, hit & ~signs[:, slot]), (-mag, hit & signs[:, slot])] if op in SIGNED else [(mag, hit)]
            for m, mask in parts:
                if bool(mask.any()):
                    key = (op, m)
                    groups[key] = groups[key] | mask if key in groups else mask
        for (op, mag), mask in groups.items():
            idx = torch.nonzero(mask).flatten().to(x.device)
            img[idx] = apply_op(img[idx], op, mag)
    return img.float().div_(255.0)


class AutoAugmentMod(TrainingMod):
    def __init__(self, first: bool = True) -> None:
        self.before_crop_flip = first

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        return autoaugment(x, gen), y


class AutoAugment(Exploiter):
    name = "autoaugment"
    summary = "AutoAugment, torchvision's CIFAR-10 policy, sampled per image"
    params = ParamSpec((
        Param("order", str, "first", "first: the policy runs before the recipe's crop+flip (EMN's Fast "
              "AutoAugment); after-crop-flip: after it (this plugin before issue 15)",
              choices=("first", "after-crop-flip")),
    ))

    def training_mod(self, ctx: Any) -> TrainingMod:
        return AutoAugmentMod(first=self.p["order"] == "first")


@hookimpl
def arena_register_exploiters(register) -> None:
    register(Cutout)
    register(Mixup)
    register(Cutmix)
    register(AutoAugment)
