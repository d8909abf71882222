"""Budgets, uint8 quantization and the check every protector output goes through.

The check lives in the core, not in plugins, and runs on the stored uint8 images: what a victim
would download is what must respect the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .params import ArenaError


class BudgetViolation(ArenaError):
    """A protector's output exceeds its declared budget (the cell is recorded as ``invalid``)."""


KINDS = ("linf", "l2", "patch", "pixels", "none")


@dataclass(frozen=True)
class Budget:
    """``linf`` and ``l2`` in [0,1] pixel units (8/255 means 8 grey levels); ``patch`` is the largest
    fraction of an image's pixel positions that may change; ``pixels`` is the largest number of pixel
    positions (an L0 count; a position counts once whatever its channels do) that may change in one image;
    ``none`` declares no constraint."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ArenaError(f"budget kind {self.kind!r}: expected one of {', '.join(map(repr, KINDS))}")

    def describe(self) -> str:
        if self.kind == "linf":
            return f"L-inf {self.value * 255:.3g}/255"
        if self.kind == "l2":
            return f"L2 {self.value:.4g}"
        if self.kind == "patch":
            return f"patch area {self.value:.3g}"
        if self.kind == "pixels":
            return f"L0 {self.value:.3g} pixel" + ("" if self.value == 1 else "s")
        return "none"


def quantize(clean: torch.Tensor, delta: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """``round(clamp(x*255 + delta*255, 0, 255))`` as uint8, with the difference clipped to ``floor(eps*255)``.

    Rounding (not flooring) and keeping negative noise are deliberate: the EMN reference code floors
    and drops negative noise, which changes the method.
    """
    x = clean.float()
    d = delta.to(x.device).float() * 255.0
    if eps is not None:
        lim = math.floor(eps * 255.0 + 1e-6)
        d = d.clamp(-lim, lim)
    return (x + d).round_().clamp_(0, 255).to(torch.uint8)


def measure(clean: torch.Tensor, protected: torch.Tensor) -> dict[str, float]:
    """Perturbation sizes of uint8 images, per image worst case, in [0,1] units."""
    d = protected.float() - clean.float()
    n = d.shape[0]
    flat = d.reshape(n, -1)
    linf = float(flat.abs().max()) / 255.0 if flat.numel() else 0.0
    l2 = float(flat.norm(dim=1).max()) / 255.0 if flat.numel() else 0.0
    changed = (d != 0).any(dim=1).reshape(n, -1).float()
    area = float(changed.mean(dim=1).max()) if n else 0.0
    pixels = float(changed.sum(dim=1).max()) if n else 0.0
    return {"linf": linf, "l2": l2, "patch_area": area, "pixels": pixels}


def check_budget(budget: Budget, clean: torch.Tensor, protected: torch.Tensor, who: str) -> dict[str, float]:
    """Raise :class:`BudgetViolation` naming the protector, the budget and the measured size."""
    if protected.shape != clean.shape:
        raise BudgetViolation(f"{who}: output shape {tuple(protected.shape)} != input shape {tuple(clean.shape)}")
    if protected.dtype != torch.uint8:
        raise BudgetViolation(f"{who}: output must be uint8 images, got {protected.dtype}")
    m = measure(clean, protected)
    if budget.kind == "linf":
        limit = math.floor(budget.value * 255.0 + 1e-6)
        if m["linf"] * 255.0 > limit + 1e-6:
            raise BudgetViolation(
                f"{who}: L-inf {m['linf'] * 255:.0f}/255 after uint8 quantization exceeds the declared {limit}/255")
    elif budget.kind == "l2":
        if m["l2"] > budget.value + 1e-6:
            raise BudgetViolation(f"{who}: L2 {m['l2']:.4f} exceeds the declared {budget.value:.4f}")
    elif budget.kind == "patch":
        if m["patch_area"] > budget.value + 1e-6:
            raise BudgetViolation(
                f"{who}: changed area {m['patch_area']:.3f} of the image exceeds the declared patch area {budget.value:.3f}")
    elif budget.kind == "pixels":
        if m["pixels"] > math.floor(budget.value + 1e-6):
            raise BudgetViolation(
                f"{who}: {m['pixels']:.0f} changed pixels in one image exceeds the declared L0 {budget.value:.0f}")
    return m
