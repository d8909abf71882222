"""What the arena hands a plugin besides data: device, seeded randomness, progress, scratch and cache
directories, and the arena's own trainer and model builder (so surrogates train as fast as victims)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import ImageSet
from .models import build_model
from .progress import Progress
from .trainer import Recipe, TrainResult, train_victim, use_channels_last


@dataclass
class Context:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    # Throwaway files of one plugin call. Left unset, a temp dir that is removed with the Context (a
    # tournament makes one Context per stage; leaking a directory each time filled /tmp).
    scratch: Path = None  # type: ignore[assignment]
    cache_dir: Path | None = None  # persistent cache for surrogates, generators, DDPMs; name files by content
    progress: Progress = field(default_factory=Progress)
    recipe: Recipe = field(default_factory=Recipe)  # the tournament's victim recipe, for reference
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scratch is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="arena-")
            self.scratch = Path(self._tmp.name)

    def generator(self, offset: int = 0, device: torch.device | str | None = None) -> torch.Generator:
        """A fresh generator seeded from the cell seed; ``offset`` separates independent streams."""
        dev = torch.device(device) if device is not None else self.device
        return torch.Generator(device=dev).manual_seed(self.seed * 1_000_003 + offset)

    def build_model(self, arch: str, data: ImageSet, seed: int | None = None) -> torch.nn.Module:
        """In the victim trainer's memory layout: NHWC weights make the convolutions of a plugin's own loops
        (PGD, min-min, a GAN's frozen classifier) NHWC too, 1.5-1.65x faster per cnn-small step on one
        AMD EPYC core without AVX-512 (training and input-gradient steps alike), inputs left as they are."""
        c, h, _ = data.shape
        model = build_model(arch, data.num_classes, c, h, seed=self.seed if seed is None else seed).to(self.device)
        if use_channels_last(self.recipe.channels_last, self.device):
            model = model.to(memory_format=torch.channels_last)
        return model

    def train(self, model: torch.nn.Module, data: ImageSet, recipe: Recipe, mods: list[Any] | None = None,
              description: str = "surrogate") -> TrainResult:
        """Train with the victim trainer (no test split: plugins never see it)."""
        return train_victim(model, data, None, recipe, seed=self.seed, device=self.device, mods=mods,
                            progress=self.progress, description=description)

    def cache_path(self, name: str) -> Path:
        """Where to keep an expensive artefact across runs. The directory may be shared with other entries of
        the same plugin module, so ``name`` must say whose it is and hash what it depends on (input content,
        params, seed). The plugin's code need not be in ``name``: tournaments and ``arena protect`` give each
        plugin code hash its own directory (``arena/codehash.py``), so an edited plugin never reads stale files."""
        base = self.cache_dir or (self.scratch / "cache")
        base.mkdir(parents=True, exist_ok=True)
        return base / name
