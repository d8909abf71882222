"""The three stages of a cell, with the contract checks the arena enforces around every plugin call.

The tournament schedules these functions; ``arena check-plugin`` and the tests call them too, so a
plugin is checked by the same code path that runs it for real. Plugins receive copies: a plugin that
mutates its input cannot corrupt a cached split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .budget import Budget, check_budget
from .context import Context
from .contracts import Exploiter, Protector
from .data import ImageSet, Splits
from .diagnostics import noise_class_share, noise_separability, protector_info
from .integrity import IntegrityViolation
from .metrics import image_quality
from .models import build_model
from .params import ArenaError
from .trainer import Recipe, TrainResult, train_victim


class ContractError(ArenaError):
    """A plugin returned something the contract forbids (wrong shape, dtype, labels)."""


# Row fields only the arena measures: a plugin's diagnostics (``last_info``) may not set them.
ARENA_METRICS = frozenset({"clean_acc", "best_acc", "selected_acc", "robust_acc", "status", "error", "noise_linf",
                           "noise_l2", "patch_area", "psnr", "ssim", "lpips", "purify_psnr", "purify_ssim",
                           "budget_kind", "budget_value"})


@dataclass
class StageOutput:
    data: ImageSet
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)  # the plugin's own diagnostics (``last_info``)


def _as_imageset(out: Any, like: ImageSet, origin: str, who: str) -> ImageSet:
    if isinstance(out, ImageSet):
        if not torch.equal(out.labels, like.labels):
            raise ContractError(f"{who}: returned labels differ from its input's labels")
        images = out.images
    elif isinstance(out, torch.Tensor):
        images = out
    else:
        raise ContractError(f"{who}: returned {type(out).__name__}; expected an ImageSet or a uint8 tensor")
    if images.dtype != torch.uint8:
        raise ContractError(f"{who}: returned {images.dtype} images; expected uint8")
    if tuple(images.shape) != tuple(like.images.shape):
        raise ContractError(f"{who}: returned shape {tuple(images.shape)}; expected {tuple(like.images.shape)}")
    return ImageSet(images.detach().cpu().contiguous(), like.labels.clone(), list(like.classes), origin)


def _copy(data: ImageSet) -> ImageSet:
    return ImageSet(data.images.clone(), data.labels.clone(), list(data.classes), data.origin)


def run_protect(protector: Protector, train: ImageSet, ctx: Context) -> StageOutput:
    """Protect the train split and enforce shape, labels and the declared budget after quantization."""
    if train.origin != "train":
        raise ContractError(f"protector '{protector.name}' may only receive the train split, not '{train.origin}'")
    who = f"protector '{protector.name}'"
    # Each hook gets its own copy: a protector that writes into what ``budget()`` receives must not
    # change the clean images its output is measured against (nor the split other cells reuse).
    budget = protector.budget(_copy(train))
    if not isinstance(budget, Budget):
        raise ContractError(f"{who}: budget() returned {type(budget).__name__}; expected an arena.Budget")
    protector.last_info = {}
    t0 = time.perf_counter()
    out = protector.protect(_copy(train), ctx)
    seconds = time.perf_counter() - t0
    protected = _as_imageset(out, train, f"protected:{protector.name}", who)
    if protector.name == "none" and not torch.equal(protected.images, train.images):
        # the baseline row of every matrix: if it is not the clean split, every comparison is wrong
        raise IntegrityViolation(f"{who}: output differs from the clean train split")
    info = protector_info(getattr(protector, "last_info", None), who)
    sizes = check_budget(budget, train.images, protected.images, who)
    metrics = {"noise_linf": sizes["linf"], "noise_l2": sizes["l2"], "patch_area": sizes["patch_area"],
               "budget_kind": budget.kind, "budget_value": float(budget.value),
               **image_quality(train.images, protected.images),
               "noise_separability": noise_separability(train.images, protected.images, train.labels),
               "noise_class_share": noise_class_share(train.images, protected.images, train.labels)}
    return StageOutput(protected, metrics, seconds, info)


def exploit_inputs(exploiters: list[Exploiter], protected: ImageSet, splits: Splits) -> tuple[ImageSet, ImageSet | None]:
    """What an exploiter may see: the protected train split, and the raw pool only if it asks for it."""
    if not protected.origin.startswith(("protected:", "purified:")):
        raise ContractError(f"exploiters may only receive protected data, not '{protected.origin}'")
    wants_raw = any(e.uses_raw_pool for e in exploiters)
    return protected, (splits.raw if wants_raw and len(splits.raw) else None)


def check_composable(exploiters: list[Exploiter]) -> None:
    names = [e.name for e in exploiters]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # e.g. two PGD attacks in a row would reach twice the declared radius: use params instead
        raise ArenaError(f"exploiter '{twice[0]}' appears twice in one combination (got {' + '.join(names)})")
    if len(exploiters) > 1:
        lone = [e.name for e in exploiters if not e.composable]
        if lone:
            raise ArenaError(f"exploiter '{lone[0]}' cannot be combined with others "
                             f"(got {' + '.join(e.name for e in exploiters)})")


def run_purify(exploiters: list[Exploiter], protected: ImageSet, raw: ImageSet | None, ctx: Context) -> StageOutput:
    """Apply each exploiter's data-level purification in order; exploiters without one pass data through."""
    check_composable(exploiters)
    if not protected.origin.startswith(("protected:", "purified:")):
        raise ContractError(f"exploiters may only receive protected data, not '{protected.origin}'")
    if raw is not None and raw.origin != "raw":
        raise ContractError(f"the raw pool handed to exploiters must be the raw split, not '{raw.origin}'")
    data = protected
    metrics: dict[str, Any] = {}
    t0 = time.perf_counter()
    for e in exploiters:
        if not e.has_purify:
            continue
        who = f"exploiter '{e.name}'"
        out = e.purify(_copy(data), _copy(raw) if (raw is not None and e.uses_raw_pool) else None, ctx)
        if out is None:
            continue
        data = _as_imageset(out, data, f"purified:{e.name}", who)
        info = getattr(e, "last_info", {}) or {}
        # diagnostics only: the arena's own measurements cannot be written by the plugin they judge
        metrics.update({k: v for k, v in dict(info).items() if k not in ARENA_METRICS})
    if data is not protected:
        q = image_quality(protected.images, data.images)
        metrics.update({"purify_psnr": q["psnr"], "purify_ssim": q["ssim"]})
    return StageOutput(data, metrics, time.perf_counter() - t0)


def run_train(arch: str, train: ImageSet, test: ImageSet, recipe: Recipe, *, seed: int, ctx: Context,
              exploiters: list[Exploiter] | None = None, description: str = "victim",
              clean_train: ImageSet | None = None) -> TrainResult:
    """Train and evaluate the victim with the exploiters' recipe changes. ``clean_train`` (the clean split
    ``train`` was made from) goes to the trainer only, for a clean share of early stopping's validation split."""
    exploiters = exploiters or []
    check_composable(exploiters)
    mods = [m for m in (e.training_mod(ctx) for e in exploiters) if m is not None]
    c, h, _ = train.shape
    model = build_model(arch, train.num_classes, c, h, seed=seed)
    return train_victim(model, train, test, recipe, seed=seed, device=ctx.device, mods=mods,
                        progress=ctx.progress, description=description, clean_train=clean_train)
