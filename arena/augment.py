"""Batched, on-device augmentation: the base crop+flip of the victim recipe.

One gather per batch instead of a PIL call per image; this is a large part of why the arena trainer
outruns the reference ``DataLoader`` loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device).to(device)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding=pad) with zero padding, independently per image."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    off = (_rand(2 * n, gen, x.device) * (2 * pad + 1)).long().clamp_(max=2 * pad)
    oy, ox = off[:n], off[n:]
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # n x h
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # n x w
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.contiguous_format)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flip with probability 1/2 per image."""
    mask = _rand(x.shape[0], gen, x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def crop_flip(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    x = random_crop(x, pad, gen)
    return random_flip(x, gen) if flip else x
