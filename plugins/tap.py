"""Adversarial poisoning with a fixed, clean-trained crafting model: ``tap`` and ``hypo``.

Both methods train one model on the clean train split, freeze it, and push every training image, within
an L-inf ball, to where that model is *most confident in a chosen label*. They differ only in the label:

- **tap** (targeted adversarial poisoning; Fowl et al., NeurIPS 2021, "Adversarial Examples Make Strong
  Poisons"): the label is a class-consistent permutation of the true one, ``k -> (k + shift) mod K``.
  The images then carry features of the wrong class that a victim learns instead of the real ones; a
  victim trained on them predicts the permutation on clean test images.
- **hypo** (hypocritical perturbation; Tao et al., NeurIPS 2021, "Better Safe Than Sorry: Preventing
  Delusive Adversaries with Adversarial Training", attack P2): the label is the true one, i.e.
  error-MINIMIZING noise, but against a model that stays fixed (EMN re-trains its surrogate; here the
  shortcut is whatever the clean model already finds easiest to confirm).

So the shared loop :func:`craft` is one sign-gradient descent on ``CE(f(t(x + delta)), label)``; "one
sign flips the objective" between error-maximizing and error-minimizing noise, and targeted TAP is the
descent form of the former (towards the permuted label), as in both reference codes.

Reference defaults, read from the authors' code (the plugin defaults unless said):

tap (lhfowl/adversarial_poisons, ``anneal.py --recipe targeted --eps 8 --budget 1.0 --attackoptim PGD``;
crafting model from Witches' Brew's "conservative" strategy, which that code adapts):
  crafting model ResNet-18 trained on clean CIFAR-10, 40 epochs, SGD lr 0.1, batch 128, wd 5e-4, the
  usual crop+flip, step decay x0.1 at 3/8, 5/8, 7/8 of training; eps 8/255; ``attackiter`` 250 signed
  steps of ``tau * eps`` = 0.05 * 8/255 = 0.4/255; init ``randn`` scaled by eps and clipped to the ball;
  ``restarts`` 8, keeping the restart with the lowest final target loss; poison batch 512; label map
  ``(y + 1) % K``; ``paugment`` on: a differentiable random translation of up to 8 px (size/4) with
  bilinear resampling, plus a horizontal flip, drawn afresh at every step.
hypo (TLMichael/Delusive-Adversary, ``poison.py --poison_type P2``; crafting model ``main.py
--train_loss ST``):
  crafting model standard-trained on clean data, 150 epochs, SGD lr 0.1 x0.1 at epochs 100 and 125,
  batch 128, wd 5e-4 (the script's default architecture is VGG-16; the arena defaults to ResNet-18 like
  tap and the brief); 100 signed steps of eps/5 from a zero start (x' = x), no augmentation, no
  restarts, batch 256, ``CE(f(x'), y)`` minimized. The script's default budget is L2 0.5; the paper also
  reports L-inf 8/255, which is the arena's threat model and the default here.

What the arena does differently, and why:
- The crafting model is trained by the arena's own trainer (``ctx.train``: the tournament's victim
  recipe with ``surrogate_epochs`` epochs, i.e. its cosine schedule instead of the references' step
  decays), so a protector gets the same fast, seeded, precision-aware training as every victim. It is
  cached under ``ctx.cache_path`` by the train split's content, architecture, recipe and seed.
- TAP's augmentation is the arena's differentiable crop-by-translation (zero padding, whole-pixel
  shifts of up to ``aug_shift``, default size/4 = 8 px at 32 px) plus flip, not bilinear sub-pixel shifts.
- The references update one batch per pass for ``steps`` passes; with the model frozen in eval mode the
  images of a batch do not interact, so running the ``steps`` updates batch by batch is the same
  algorithm with a different order of random draws.
- TAP keeps, per batch, the restart with the lowest final target loss (measured without augmentation);
  the reference keeps one restart for the whole set by the summed loss, which this can only lower.
- The noise is optimized on the images as stored (uint8 -> [0,1]) and quantized to uint8 once
  (``arena.quantize``: round, keep negative noise), so the budget is checked on what a victim receives.

Diagnostics (``last_info``): the crafting model's clean accuracy on the train split, the share of
protected images it assigns the objective label (tap: the target class, the attack success rate;
hypo: the true class), its accuracy on the protected images, and the mean objective loss on clean and
protected images. ``converged`` is "success rate >= ``success_threshold``": a weak crafting model or too
few steps marks the protect stage weak on the board.

Seed spread at the quick tournament's scale (issue 19; digits 16 px, cnn-small victim 10 epochs, exploiter
none, 2-core AMD EPYC without AVX-512, fp32; BENCHMARKS.md, "whose spread it is": ``benchmarks/stability.py``
5 seeds, ``benchmarks/victim_spread.py`` 4 victims on each of 3 protected sets; unprotected 93.0 %, sd 1.1):
TAP gives 21-50 % (sd 12.0) and is weak on every seed: its crafting model gives the target label to only 17-22
% of the protected images at 16/255 and 40 steps. HYPO gives 37-64 % (sd 10.3), weak on 1 of 5. Victims on one
protected set spread by 4.0 (TAP) / 6.0 (HYPO) points, the sets' means by 5.0 / 8.0.

Why TAP is weak there, and why more optimization does not help (fifth session; ``python
benchmarks/objective_ceiling.py benchmarks/settings/quick-cnn-small.yaml --protect-seeds 0,1,2``, 256 train images,
the cnn-small quick grid's cached 10-epoch crafting model, 16/255, same CPU): the targeted success rate is 18-20 % with
the quick settings (40 steps of eps/4, shifts of up to 4 px), 19-23 % with 2-px shifts, 21-22 % with 100
steps, 22-24 % with 200 steps of eps/20, 20-23 % with 4 restarts, and 54-56 % with no augmentation at all.
Five times the steps or four restarts move it by at most 5 points: the 90 % criterion is out of reach of a
clean-trained digits model at 16/255 (digits' strokes are full-contrast; the same model class is broken far
more easily on CIFAR-10). The weak mark is the truth about the objective, and the victims still fall to
21-50 %: TAP's noise carries wrong-class features without fooling the crafting model.

HYPO's surrogate trained 3 epochs in the cnn-small quick grid (clean accuracy 0.29-0.61). With TAP's 10-epoch
crafting model instead (shared, so free in the grid; ``python benchmarks/victim_spread.py
benchmarks/settings/quick-cnn-small.yaml --protectors hypo --protect-seeds 0,1,2 --victims 3 --set
hypo.surrogate_epochs=10``) every stage converges (success 1.0), but the victims learn more (59.3 % against
45.1 % with 3 epochs, same command without the ``--set``) and the spread stays (within 8.0 / between 5.9 against
8.1 / 8.1): it is the victims' race against the noise, not the surrogate's.

On cnn-tiny (the quick grid since the sixth session) 3 epochs are too few: the crafting model reaches 0.25-0.59
clean accuracy and the stage converges on 1 of 5 seeds (success 0.64-0.96). ``python
benchmarks/victim_spread.py tournaments/quick.yaml --protectors hypo --protect-seeds 0,1,2,3,4 --victims 2
--set hypo.surrogate_epochs=E`` (one AMD EPYC without AVX-512), victims' mean clean accuracy over 5 sets x 2:

| E | model clean acc | converged | victims % | within / between sd |
|---|---|---|---|---|
| 3 | 0.25-0.59 | 1 of 5 | 43.5 | 6.7 / 5.5 |
| 5 | 0.74-0.88 | 5 of 5 | 50.8 | 8.7 / 6.9 |
| 8 | 0.89-0.91 | 5 of 5 | 58.4 | 6.4 / 8.3 |

The better the crafting model, the less the noise protects, as on cnn-small. The quick grid uses 5 epochs, the
fewest with which every stage meets the criterion, so the row is not marked weak for a model that was cut short.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from arena import Budget, ImageSet, Param, ParamError, ParamSpec, Protector, evaluate, hookimpl, quantize
from arena.augment import crop_flip
from arena.trainer import use_amp, use_channels_last

from . import emn_common as cache

_INITS = ("zero", "uniform", "normal")


def _params(steps: int, step_ratio: float, init: str, augment: bool, restarts: int, batch_size: int,
            epochs: int) -> tuple[Param, ...]:
    """The params both methods share; each passes its reference's defaults."""
    return (
        Param("eps", float, 8 / 255, "L-inf radius in [0,1] units", low=0.0, high=1.0),
        Param("steps", int, steps, "signed-gradient steps per image", low=0),
        Param("step_size", float, None, f"step in [0,1] units; None = eps * {step_ratio:g}",
              low=0.0, high=1.0, optional=True),
        Param("init", str, init, "start: zero, uniform in the ball, or normal(0, eps) clipped to it",
              choices=_INITS),
        Param("restarts", int, restarts, "independent starts per batch; the lowest final loss is kept", low=1),
        Param("augment", bool, augment, "differentiable random translation + flip at every step"),
        Param("aug_shift", int, None, "largest translation in pixels; None = image side / 4", low=0, optional=True),
        Param("batch_size", int, batch_size, "images crafted at once", low=1),
        Param("surrogate", str, "resnet18", "architecture of the crafting model trained on the clean train split"),
        Param("surrogate_epochs", int, epochs, "epochs of the crafting model (the tournament's victim recipe)",
              low=1),
        Param("success_threshold", float, 0.9,
              "converged when at least this share of protected images gets the objective label", low=0.0, high=1.0),
    )


def _uniform(shape: torch.Size, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, device=gen.device) * 2 - 1).to(device)


def start(x: torch.Tensor, eps: float, init: str, gen: torch.Generator) -> torch.Tensor:
    """The initial delta: zero, uniform in the ball, or normal(0, eps) clipped to the ball (TAP's randn)."""
    if init == "zero" or eps == 0:
        return torch.zeros_like(x)
    if init == "uniform":
        d = _uniform(x.shape, gen, x.device) * eps
    else:
        d = (torch.randn(x.shape, generator=gen, device=gen.device).to(x.device) * eps).clamp_(-eps, eps)
    return (x + d).clamp_(0, 1) - x


def craft(model: nn.Module, x: torch.Tensor, label: torch.Tensor, eps: float, step_size: float, steps: int,
          delta: torch.Tensor, shift: int | None, gen: torch.Generator, amp: bool = False) -> torch.Tensor:
    """``steps`` of delta <- clip_eps(delta - step * sign(grad CE(f(t(x + delta)), label))), x + delta kept in
    [0,1]; ``t`` a fresh random translation (up to ``shift`` px) + flip per step when ``shift`` is not None.

    Descent towards ``label``: tap passes the permuted labels, hypo the true ones. The model must be in
    eval mode with frozen parameters (the caller's job, once for all batches)."""
    for _ in range(steps):
        delta.requires_grad_(True)
        xd = x + delta
        if shift is not None:
            xd = crop_flip(xd, shift, True, gen)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(xd).float(), label)
        (g,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            delta = (delta - step_size * g.sign()).clamp_(-eps, eps)
            delta = (x + delta).clamp_(0, 1) - x
    return delta.detach()


@torch.no_grad()
def _loss_each(model: nn.Module, x: torch.Tensor, label: torch.Tensor, amp: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(x).float()
    return F.cross_entropy(out, label, reduction="none")


class _Poison(Protector):
    """The shared protect(): crafting model (cached), then :func:`craft` batch by batch towards
    :meth:`objective` labels, restarts, quantization, diagnostics."""

    version = "1"
    uses_recipe = True  # the crafting model is trained with the tournament's victim recipe (its own epochs)
    step_ratio: ClassVar[float] = 1.0
    objective_name: ClassVar[str] = ""
    # cnn-small crafting model, 1 epoch, 2 steps of a large step, no restarts: the contract in seconds
    check_params: ClassVar[dict[str, Any]] = {"surrogate": "cnn-small", "surrogate_epochs": 1, "steps": 2,
                                              "step_size": 4 / 255, "restarts": 1, "batch_size": 16}

    def objective(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        raise NotImplementedError

    def budget(self, train: ImageSet) -> Budget:
        return Budget("linf", self.p["eps"])

    def _step_size(self) -> float:
        s = self.p["step_size"]
        return self.p["eps"] * self.step_ratio if s is None else s

    def protect(self, train: ImageSet, ctx: Any) -> ImageSet:
        key = {**self.p, "step_size": self._step_size(), "recipe": repr(self._recipe(ctx))}
        return cache.cached_protect(self, train, ctx, key, lambda: self._run(train, ctx))

    def _recipe(self, ctx: Any) -> Any:
        return replace(ctx.recipe, epochs=self.p["surrogate_epochs"])

    def _surrogate(self, train: ImageSet, ctx: Any) -> nn.Module:
        """The crafting model, trained on the clean train split by the arena's trainer, then frozen. Cached
        on its own (tap and hypo with the same architecture, recipe and seed share it)."""
        arch, recipe = self.p["surrogate"], self._recipe(ctx)
        model = ctx.build_model(arch, train, seed=ctx.seed + 211)
        blob = json.dumps({"arch": arch, "recipe": repr(recipe), "seed": ctx.seed, "v": self.version}, sort_keys=True)
        path = ctx.cache_path(f"tap-surrogate-{train.fingerprint()}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.pt")
        loaded = False
        if path.exists():
            try:
                model.load_state_dict(torch.load(path, map_location=ctx.device, weights_only=True))
                loaded = True
            except Exception:  # a corrupt or foreign file is retrained, never trusted
                loaded = False
        if not loaded:
            ctx.train(model, train, recipe, description=f"{self.name}: crafting model")
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
            os.replace(tmp, path)
        if use_channels_last(recipe.channels_last, ctx.device):
            # the trainer leaves a trained model in NHWC: a loaded one must match, or the float rounding of
            # the gradients (and so their signs) would differ between a cache hit and a miss
            model = model.to(memory_format=torch.channels_last)
        model.eval()
        for q in model.parameters():
            q.requires_grad_(False)
        return model

    def _run(self, train: ImageSet, ctx: Any) -> tuple[torch.Tensor, dict[str, Any], nn.Module]:
        p = self.p
        dev = ctx.device
        model = self._surrogate(train, ctx)
        amp = use_amp(ctx.recipe.amp, dev)
        X, Y = train.images.to(dev), train.labels.to(dev)
        goal = self.objective(Y, train.num_classes)
        n, (_, h, w) = X.shape[0], train.shape
        eps, step = p["eps"], self._step_size()
        shift = (p["aug_shift"] if p["aug_shift"] is not None else max(h, w) // 4) if p["augment"] else None
        gen = ctx.generator(offset=0x7A9, device=dev)
        bs = min(p["batch_size"], n)
        out = torch.empty_like(train.images)
        task = ctx.progress.task(f"{self.name}: crafting", total=(n + bs - 1) // bs)
        try:
            for i in range(0, n, bs):
                x, g = X[i:i + bs].float().div_(255.0), goal[i:i + bs]
                best, best_loss = None, None
                for _ in range(p["restarts"]):
                    d = craft(model, x, g, eps, step, p["steps"], start(x, eps, p["init"], gen), shift, gen, amp)
                    if p["restarts"] == 1:
                        best = d
                        break
                    loss = _loss_each(model, (x + d).clamp(0, 1), g, amp).sum()
                    if best_loss is None or float(loss) < best_loss:
                        best, best_loss = d, float(loss)
                out[i:i + bs] = quantize(X[i:i + bs], best, eps).cpu()
                task.advance(1)
        finally:
            task.close()
        return out, self._info(model, X, Y, goal, out.to(dev), amp, bs), model

    def _info(self, model: nn.Module, X: torch.Tensor, Y: torch.Tensor, goal: torch.Tensor,
              P: torch.Tensor, amp: bool, bs: int) -> dict[str, Any]:
        hits = 0
        clean_loss = prot_loss = 0.0
        for i in range(0, X.shape[0], bs):
            xc, xp = X[i:i + bs].float().div_(255.0), P[i:i + bs].float().div_(255.0)
            g = goal[i:i + bs]
            clean_loss += float(_loss_each(model, xc, g, amp).sum())
            prot_loss += float(_loss_each(model, xp, g, amp).sum())
            with torch.no_grad(), torch.autocast(xp.device.type, dtype=torch.bfloat16, enabled=amp):
                hits += int((model(xp).argmax(1) == g).sum())
        n = max(1, X.shape[0])
        rate = hits / n
        return {
            "objective": self.objective_name,
            "surrogate_acc_clean": evaluate(model, X, Y, bs, amp=amp),
            "surrogate_acc_protected": evaluate(model, P, Y, bs, amp=amp),
            "success_rate": rate,
            "clean_objective_loss": clean_loss / n,
            "final_loss": prot_loss / n,
            "converged": rate >= self.p["success_threshold"],
            "criterion": f"crafting model gives >= {self.p['success_threshold']:g} of protected images "
                         f"the {self.objective_name} label",
        }


class TAP(_Poison):
    name = "tap"
    summary = "targeted adversarial poisoning: PGD towards a permuted class on a clean-trained model (Fowl 2021)"
    step_ratio = 0.05  # the reference's tau: step = tau * eps
    objective_name = "target (permuted)"
    params = ParamSpec((*_params(steps=250, step_ratio=0.05, init="normal", augment=True, restarts=8,
                                 batch_size=512, epochs=40),
                        Param("shift", int, 1, "target permutation k -> (k + shift) mod K", low=1)))

    def objective(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        if self.p["shift"] % num_classes == 0:
            raise ParamError(f"protector 'tap': param 'shift' = {self.p['shift']} maps every class of "
                             f"{num_classes} onto itself; expected a shift that is not a multiple of {num_classes}")
        return (y + self.p["shift"]) % num_classes


class Hypo(_Poison):
    name = "hypo"
    summary = "hypocritical perturbations: error-minimizing noise on a fixed clean-trained model (Tao 2021)"
    step_ratio = 0.2  # eps / 5
    objective_name = "true"
    params = ParamSpec(_params(steps=100, step_ratio=0.2, init="zero", augment=False, restarts=1,
                               batch_size=256, epochs=150))

    def objective(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return y


@hookimpl
def arena_register_protectors(register) -> None:
    register(TAP)
    register(Hypo)
