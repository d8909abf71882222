"""Shared parts of the L2-bounded synthetic protectors (``lsp``, ``ar``): the radius as the papers scale it,
and a quantization that keeps the radius after uint8 rounding.

Both papers state their radius for CIFAR-sized images (3 x 32 x 32 = 3072 values, [0,1] pixel units). A
fixed radius on a smaller image would be a larger change per pixel, on a larger one a smaller change; the
papers themselves scale with the square root of the image size (AR uses 1 on 32 px and 3 on 96 px STL-10;
LSP writes its radius as ``linf * sqrt(dim)``), so the per-pixel RMS stays what the paper chose.
"""

from __future__ import annotations

import math

import torch

from arena import quantize

REF_DIM = 3 * 32 * 32


def scaled_radius(l2_at_32: float, shape: tuple[int, int, int]) -> float:
    """The L2 radius for images of ``shape`` that has the per-pixel RMS of ``l2_at_32`` on 3 x 32 x 32."""
    c, h, w = shape
    return l2_at_32 * math.sqrt(c * h * w / REF_DIM)


def unit_l2(delta: torch.Tensor) -> torch.Tensor:
    """Each image's delta divided by its own L2 norm (float64 so the norm of a large image cannot overflow)."""
    norms = delta.double().flatten(1).norm(dim=1).clamp_min(1e-30)
    return (delta.double() / norms.view(-1, 1, 1, 1)).float()


def quantize_l2(clean: torch.Tensor, delta: torch.Tensor, radius: float, iters: int = 30) -> torch.Tensor:
    """uint8 ``round(clamp(x + s_i * delta_i))`` with the largest per-image ``s_i`` in [0, 1] whose stored change
    has L2 <= ``radius``.

    Rounding to grey levels can lengthen a delta of exactly ``radius`` (many components round up), so an image
    whose rounded change is too long is shrunk by bisection on its own scale; the stored change is monotone in
    the scale, so the result holds the budget by construction. Images already inside keep scale 1. (A
    delta whose components are nearly equal can only shrink to all-or-nothing; the random noises here never
    are, and the tests check that the protected images use most of their radius.)
    """
    out = quantize(clean, delta)
    over = _l2(clean, out) > radius
    if not bool(over.any()):
        return out
    idx = torch.nonzero(over).flatten()
    c, d = clean[idx], delta[idx]
    lo = torch.zeros(len(idx))
    hi = torch.ones(len(idx))
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = _l2(c, quantize(c, d * mid.view(-1, 1, 1, 1))) <= radius
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    out[idx] = quantize(c, d * lo.view(-1, 1, 1, 1))
    return out


def _l2(clean: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    return (protected.float() - clean.float()).flatten(1).norm(dim=1) / 255.0
