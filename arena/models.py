"""Model construction through the registry, so architectures are plugins like everything else."""

from __future__ import annotations

import torch

from .registry import get_registry


def build_model(arch: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                seed: int | None = None) -> torch.nn.Module:
    """Build a registered architecture; with ``seed`` the initial weights are reproducible."""
    a = get_registry().architecture(arch)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return a.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    return a.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
