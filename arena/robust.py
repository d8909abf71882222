"""Robust accuracy, measured by the arena: an exploiter declares the evaluation it wants, the arena runs it.

Why in the core: the evaluation needs the clean test split, which plugin code must never receive (a
plugin handed the test tensors could keep them and train on them, or report any number it likes as
``robust_acc``). A :class:`~arena.TrainingMod` sets ``robust_eval = RobustEval(...)``; after training the
trainer attacks the victim with L-inf PGD on the test split and records ``robust_acc``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RobustEval:
    """L-inf PGD evaluation: radius and step size in [0,1] pixel units; ``size`` > 0 attacks a seeded
    subset of the test split (20 PGD steps over a whole split cost about 20 epochs of training)."""

    eps: float
    steps: int
    step_size: float
    random_start: bool = True
    size: int = 0
    batch_size: int = 512


def pgd_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
               steps: int, random_start: bool, gen: torch.Generator | None, amp: bool = False) -> torch.Tensor:
    """L-inf PGD that maximizes CE(model(x'), y); returns ``x' = clamp(x + delta, 0, 1)``, detached.

    The caller decides the model's mode; ``y`` may be int64 labels or N x K soft targets.
    """
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=gen, device=gen.device if gen is not None else x.device)
        delta = (noise.to(x.device) * 2 - 1) * eps
    else:
        delta = torch.zeros_like(x)
    delta = ((x + delta).clamp(0, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x + delta)
        loss = F.cross_entropy(out.float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + step_size * grad.sign()).clamp_(-eps, eps)
            delta = (x + delta).clamp_(0, 1) - x
    return (x + delta).detach()


def robust_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: RobustEval,
                    gen: torch.Generator, amp: bool = False) -> float:
    """Accuracy of ``model`` (eval mode, BatchNorm on running statistics) on PGD-attacked uint8 ``images``."""
    n = images.shape[0]
    if 0 < spec.size < n:
        idx = torch.randperm(n, generator=gen, device=gen.device)[: spec.size].to(images.device)
        images, labels = images[idx], labels[idx]
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, images.shape[0], spec.batch_size):
            xb = images[i : i + spec.batch_size].float().div_(255.0)
            yb = labels[i : i + spec.batch_size]
            adv = pgd_attack(model, xb, yb, eps=spec.eps, step_size=spec.step_size, steps=spec.steps,
                             random_start=spec.random_start, gen=gen, amp=amp)
            with torch.no_grad(), torch.autocast(adv.device.type, dtype=torch.bfloat16, enabled=amp):
                correct += int((model(adv).argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / max(1, images.shape[0])
