"""Madry PGD adversarial training (Madry et al., ICLR 2018) as a change to the victim's training step.

Algorithm (per training batch x, targets y, model f in train mode):

1. switch f to eval mode (BatchNorm uses running statistics, so the attack neither updates them nor
   depends on the batch's own statistics; METHODS.md "BatchNorm" convention);
2. delta ~ U(-eps, eps) (``random_start``), then ``steps`` times
   ``delta <- clamp(delta + step_size * sign(grad_delta CE(f(clamp(x + delta, 0, 1)), y)), -eps, eps)``;
3. switch f back to train mode and take the ordinary SGD step on ``clamp(x + delta, 0, 1)``.

Defaults are the paper's CIFAR setting (8/255, 10 steps of 2/255, random start); METHODS.md also
asks for the SEM setting (4/255, 10 steps of 0.8/255), which is just a param change. The attack runs
after the base crop+flip and after every ``transform_batch`` of other exploiters, so it attacks the
image the model actually trains on. ``y`` may be soft targets (MixUp/CutMix, N x K floats):
``F.cross_entropy`` takes both, so ``adversarial-training + cutmix`` attacks the mixed loss.

After training, the arena reports PGD-``eval_steps`` robust accuracy on the clean test split at the same
radius (``robust_acc``), optionally on a seeded subset (``eval_size``) because 20 attack steps over a
large test split cost about 20 training epochs' worth of forward-backward passes. The exploiter only
declares that evaluation (``robust_eval``, an :class:`arena.robust.RobustEval`); the attack code is
``arena.robust.pgd_attack``, shared with the training-time attack.

Differences from the reference code (Madry's TF ``cifar10_challenge`` / common PyTorch ports): the
gradient is taken with ``torch.autograd.grad`` on delta only (no parameter gradients accumulate during
the attack); randomness comes from the trainer's seeded generator; on CUDA the attack runs under the
same bf16 autocast as the training step when the recipe enables it (CUDA, and CPUs with native bf16).

Composability: combines with every other exploiter. Sensible cells: ``adversarial-training`` + a
data-level purifier (ISS, filters, JCDP: purify then train robustly), + ``cutmix``/``mixup``/``cutout``/
``autoaugment`` (attack the augmented batch), + ``early-stopping`` (``robust_acc`` is then still the
last epoch's model: the trainer keeps no checkpoints). It costs about ``steps + 1`` times standard
training. Naming ``adversarial-training`` twice in one combination is refused by the arena (the second
attack would start from the first one's output and reach twice the radius): raise ``steps`` or ``eps``
instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from arena import Exploiter, Param, ParamSpec, TrainingMod, hookimpl
from arena.robust import RobustEval, pgd_attack
from arena.trainer import use_amp

__all__ = ["AdversarialTraining", "PGDTraining", "pgd_attack"]


class PGDTraining(TrainingMod):
    """The training-step change: attack each batch with BN in eval mode, train on the result."""

    def __init__(self, eps: float, step_size: float, steps: int, random_start: bool, eval_steps: int,
                 eval_size: int, eval_batch_size: int) -> None:
        self.eps, self.step_size, self.steps = eps, step_size, steps
        self.random_start = random_start
        self.eval_steps, self.eval_size, self.eval_batch_size = eval_steps, eval_size, eval_batch_size
        self.amp_flag = "off"
        # the arena runs this evaluation on the test split after training (plugins never see test data)
        self.robust_eval = (RobustEval(eps, eval_steps, step_size, random_start, eval_size, eval_batch_size)
                            if eval_steps > 0 else None)

    def configure(self, recipe: Any) -> Any:
        self.amp_flag = getattr(recipe, "amp", "off")  # attack under the same autocast as the update
        return recipe

    def perturb_batch(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      gen: torch.Generator) -> torch.Tensor:
        if self.steps == 0 and not self.random_start:
            return x
        was_training = model.training
        model.eval()
        try:
            return pgd_attack(model, x, y, eps=self.eps, step_size=self.step_size, steps=self.steps,
                              random_start=self.random_start, gen=gen,
                              amp=use_amp(self.amp_flag, x.device))
        finally:
            model.train(was_training)


class AdversarialTraining(Exploiter):
    name = "adversarial-training"
    summary = "Madry PGD adversarial training of the victim (BN eval during the attack)"
    version = "1"
    params = ParamSpec((
        Param("eps", float, 8 / 255, "L-inf attack radius in [0,1] units", low=0.0, high=1.0),
        Param("steps", int, 10, "PGD steps per training batch", low=0, high=1000),
        Param("step_size", float, 2 / 255, "PGD step size in [0,1] units", low=0.0, high=1.0),
        Param("random_start", bool, True, "start PGD from a uniform point in the eps-ball"),
        Param("eval_steps", int, 20, "PGD steps of the robust-accuracy evaluation (0: skip it)", low=0, high=1000),
        Param("eval_size", int, 0, "test images for the robust evaluation (0: the whole test split)", low=0),
        Param("eval_batch_size", int, 512, "batch size of the robust evaluation", low=1),
    ))
    # two PGD steps (of a step that still reaches the ball) and a robust evaluation on 8 images
    check_params: ClassVar[dict[str, Any]] = {"steps": 2, "step_size": 4 / 255, "eval_steps": 2, "eval_size": 8}

    def training_mod(self, ctx: Any) -> TrainingMod:
        p = self.p
        return PGDTraining(p["eps"], p["step_size"], p["steps"], p["random_start"], p["eval_steps"],
                           p["eval_size"], p["eval_batch_size"])


@hookimpl
def arena_register_exploiters(register) -> None:
    register(AdversarialTraining)
