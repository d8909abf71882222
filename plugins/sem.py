"""Stable error-minimizing noise (SEM, Liu et al., AAAI 2024) and robust error-minimizing noise
(REM, Fu et al., ICLR 2022), one min-min-max loop with two choices of inner perturbation.

Error-minimizing noise is brittle against adversarial training: a victim that trains on
``x + delta_u + delta_a`` can escape the shortcut. REM therefore makes the noise minimize the loss of a
*robust* surrogate under the worst perturbation ``delta_a`` of radius rho_a; SEM observes that the
robustness of the surrogate, not the inner attack, is what matters, and replaces the costly inner attack
by random noise ``delta_r``, which is both cheaper (about 9x fewer passes) and more stable under
augmentation.

Algorithm (both methods; ``t`` is a random crop-by-translation + flip, written as tensor ops so it is
differentiable with respect to its input)::

    surrogate f (resnet18), SGD lr 0.1 x0.1 every 2,000 steps, momentum 0.9, wd 5e-4
    for step in 1..train_steps (5,000), batch (x, y) of 128:
        f.eval();  delta_u ~ U(-rho_u, rho_u)                             # rho_u = 8/255
        repeat def_steps (10) times:
            g = mean over j = 1..J (5) of  grad_delta_u CE(f(t_j(x + delta_u) + delta_j), y)
                 SEM: delta_j ~ U(-rho_a, rho_a)                           # rho_a = 4/255
                 REM: delta_j = PGD ascent on t_j(x + delta_u), rho_a, atk_steps of atk_step_size
            delta_u <- clamp(delta_u - def_step_size * sign(g), -rho_u, rho_u)   # 1.6/255
        delta_u <- round to whole grey levels (the uint8 image that would be stored)
        xa = t(x + delta_u);  delta_a = PGD ascent (rho_a, 10 steps of 0.8/255, uniform start), f.eval()
        f.train();  SGD step on CE(f(xa + delta_a), y)                    # adversarial training
    regenerate delta_u for every training image with the final surrogate (same inner loop)

The SEM reference code is the REM code base (github.com/fshp971/robust-unlearnable-examples) with one
function changed, the inner ``_get_adv_``: PGD there, uniform noise in SEM (the SEM authors' README). This
module keeps the same shape: ``sem`` and ``rem`` are one loop and differ only in ``robust_inner``. The
output, the run info (``last_info``) and the final surrogate are cached under ``ctx.cache_path`` keyed by
the input's content hash, the params, the seed and ``version``, so a rerun is one file read.

Seed to seed at quick scale (one AMD EPYC, digits 16 px, cnn-small surrogate of 60 steps, J = 2, 3
defensive steps; victim cnn-small 12 epochs; seeds 0-4): at 8/255 SEM gave 29-65 % (sd 15) and REM 27-50 %
(sd 12); at 16/255 SEM 29-44 % (sd 5.9) and REM 27-49 % (sd 8.6). ``last_info`` reports the surrogate's final
robust loss and accuracy and its accuracy on clean vs protected train images; after 60 steps it reads 23-61 %
of the clean images and 86-100 % of the protected ones, so the noise, not the content, is what it learned.
The papers give no stopping rule (a fixed step budget), so no stage is marked weak.

Differences from the reference code, and why:
- Pixels are in [0,1] and every intermediate image is clamped to [0,1]; the references work in
  0..255 (SEM's clip even clamps to [-0.5, 0.5] after a normalization the arena does not use).
- The J augmented samples are one batch of J*B images instead of J sequential passes: the averaged
  gradient is the same, its sign is what the update uses, and one big batch is faster on a GPU.
- The stored output goes through :func:`arena.quantize` (round, negative noise kept) and the noise used
  for each model step is already that quantized noise, so the surrogate trains on what a victim sees.
- With ``rho_a = 0`` the surrogate trains normally and SEM's ``delta_r`` is zero: this is the
  paper's rho_a = 0 column, not an error.
- All randomness (batch order, augmentation, starts) comes from seeded generators, so a seed gives
  the same images on CPU.

Seed spread at the quick tournament's scale (issue 19; digits 16 px, cnn-small surrogate of 60 steps, J = 2;
cnn-small victim 10 epochs, exploiter none; 2-core AMD EPYC without AVX-512, fp32; BENCHMARKS.md, "SEM and
REM: the defensive steps"; unprotected 93.0 %, sd 1.1):
- With 3 defensive steps of 0.0235 at 16/255 (a travel of 1.1x the radius) SEM gave 24-55 % (sd 12.3) and REM
  20-55 % (sd 15.6) over 5 seeds. Victims on one protected set agreed within 2.6-4.3 points, and the sets of
  different protect seeds differed by 14 points (sd).
- The papers' ratio, 10 steps travelling twice the radius (10 x 0.0125), gives **SEM 10-30 % (sd 8.3), REM
  18-36 % (sd 7.0)** over 5 seeds (``benchmarks/stability.py``). The noise keeps less of its random start and
  more of its energy in its class means (51-71 % against 41-55 %), and over 36 protected sets the victim's
  accuracy follows that share (Spearman -0.68). ``tournaments/quick.yaml`` uses these 10 steps.
- What remains (between-set sd 7.8 / 7.1) is the game's whole path. Swapping the surrogate's init seed and
  the seed of everything else moves the outcome with neither alone; 3x the surrogate steps did not remove it,
  and J = 5 cut REM's to 4.1 but not SEM's (8.6) at 2.6-3.4x the cost. At this scale it is the method's
  behaviour.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from arena import Budget, ImageSet, Param, ParamSpec, Protector, evaluate, hookimpl, quantize
from arena.augment import crop_flip

from . import emn_common as cache

_PARAMS = ParamSpec((
    Param("surrogate", str, "resnet18", "architecture of the robust surrogate"),
    Param("train_steps", int, 5000, "surrogate SGD steps (each with fresh defensive noise)", low=0),
    Param("batch_size", int, 128, "images per surrogate step and per regeneration batch", low=1),
    Param("lr", float, 0.1, "surrogate SGD learning rate", low=0.0),
    Param("lr_decay", float, 0.1, "lr factor applied every lr_decay_every steps", low=0.0, high=1.0),
    Param("lr_decay_every", int, 2000, "steps between lr decays", low=1),
    Param("momentum", float, 0.9, "surrogate SGD momentum", low=0.0, high=1.0),
    Param("weight_decay", float, 5e-4, "surrogate SGD weight decay", low=0.0),
    Param("rho_u", float, 8 / 255, "L-inf radius of the defensive noise, [0,1] units", low=0.0, high=1.0),
    Param("def_steps", int, 10, "PGD (descent) steps on the defensive noise", low=1),
    Param("def_step_size", float, 1.6 / 255, "defensive PGD step, [0,1] units", low=0.0, high=1.0),
    Param("rho_a", float, 4 / 255, "adversarial-training radius the noise must survive", low=0.0, high=1.0),
    Param("atk_steps", int, 10, "PGD (ascent) steps of the attack (adversarial training; REM's inner max)",
          low=0),
    Param("atk_step_size", float, 0.8 / 255, "attack PGD step, [0,1] units", low=0.0, high=1.0),
    Param("samples", int, 5, "J: augmentation/perturbation samples averaged per defensive step", low=1),
    Param("aug_pad", int, 4, "translation range (pixels, zero padding) of the random crop t", low=0),
    Param("aug_flip", bool, True, "random horizontal flip in t (and in the surrogate's training batches)"),
))


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop-by-translation and flip; pad/gather/flip are autograd ops, so the gradient reaches x."""
    return crop_flip(x, pad, flip, gen)


def _uniform(like: torch.Tensor, radius: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(like.shape, generator=gen, device=gen.device).to(like.device) * 2 - 1) * radius


def pgd_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float, steps: int,
               step_size: float, gen: torch.Generator) -> torch.Tensor:
    """L-inf PGD that *maximizes* CE from a uniform start; returns delta (x + delta stays in [0,1]).

    Runs the model in whatever mode it is in (callers put it in eval mode so BatchNorm statistics are
    not polluted by adversarial batches) and leaves parameter gradients untouched.
    """
    x = x.detach()
    if radius <= 0:
        return torch.zeros_like(x)
    delta = _uniform(x, radius, gen)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (g,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            delta = (delta + step_size * g.sign()).clamp(-radius, radius)
            delta = (x + delta).clamp(0, 1) - x
    return delta.detach()


def defensive_noise(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, p: dict[str, Any], robust: bool,
                    gen: torch.Generator) -> torch.Tensor:
    """Error-minimizing noise for a batch against the (eval-mode) surrogate, averaged over J samples of
    augmentation and inner perturbation (random for SEM, PGD for REM)."""
    was_training = model.training
    model.eval()
    req = [q.requires_grad for q in model.parameters()]
    for q in model.parameters():  # only the noise needs gradients: cheaper backward passes
        q.requires_grad_(False)
    rho_u, rho_a, j = p["rho_u"], p["rho_a"], p["samples"]
    yj = y.repeat(j)
    delta = _uniform(x, rho_u, gen)
    try:
        for _ in range(p["def_steps"]):
            delta.requires_grad_(True)
            xd = (x + delta).clamp(0, 1).repeat(j, 1, 1, 1)
            xt = augment(xd, p["aug_pad"], p["aug_flip"], gen)
            if robust:
                inner = pgd_attack(model, xt, yj, rho_a, p["atk_steps"], p["atk_step_size"], gen)
            else:
                inner = _uniform(xt, rho_a, gen) if rho_a > 0 else torch.zeros_like(xt)
            loss = F.cross_entropy(model((xt + inner).clamp(0, 1)), yj)
            (g,) = torch.autograd.grad(loss, [delta])
            with torch.no_grad():
                delta = (delta - p["def_step_size"] * g.sign()).clamp(-rho_u, rho_u)
    finally:
        for q, r in zip(model.parameters(), req):
            q.requires_grad_(r)
        model.train(was_training)
    return delta.detach()


def _to_float(u8: torch.Tensor) -> torch.Tensor:
    return u8.float().div_(255.0)


def _quantized(x_u8: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The uint8 images a victim would download for this noise."""
    return quantize(x_u8, delta, eps)


class SEM(Protector):
    name = "sem"
    summary = "stable error-minimizing noise: EMN against an adversarially trained surrogate, random inner noise"
    version = "1"
    params = _PARAMS
    # cnn-small, 2 surrogate steps, J=2 and short inner loops (REM inherits them): seconds instead of the
    # 5,000 ResNet-18 steps of the paper
    check_params: ClassVar[dict[str, Any]] = {
        "surrogate": "cnn-small", "train_steps": 2, "batch_size": 16, "samples": 2, "def_steps": 2,
        "def_step_size": 3 / 255, "rho_a": 1 / 255, "atk_steps": 1, "atk_step_size": 1 / 255, "aug_pad": 2}
    robust_inner: bool = False  # REM: PGD inner maximization instead of random noise

    def budget(self, train: ImageSet) -> Budget:
        return Budget("linf", self.p["rho_u"])

    def protect(self, train: ImageSet, ctx: Any) -> ImageSet:
        return cache.cached_protect(self, train, ctx, self.p, lambda: self._run(train, ctx))

    def _run(self, train: ImageSet, ctx: Any) -> tuple[torch.Tensor, dict[str, Any], torch.nn.Module]:
        p = self.p
        dev = ctx.device
        X, Y = train.images.to(dev), train.labels.to(dev)
        n = X.shape[0]
        bs = min(p["batch_size"], n)
        gen = ctx.generator(offset=0x5E3, device=dev)
        model = ctx.build_model(p["surrogate"], train)
        opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"],
                              weight_decay=p["weight_decay"])
        eps = p["rho_u"]
        perm = torch.randperm(n, generator=gen, device=dev)
        cursor = 0
        robust_acc = float("nan")  # surrogate accuracy on its adversarial batches, last step
        tail = max(1, p["train_steps"] // 10)  # final loss/accuracy: mean over the last tenth of the steps
        tail_loss = tail_acc = 0.0
        task = ctx.progress.task(f"{self.name}: robust surrogate", total=p["train_steps"])
        try:
            for step in range(p["train_steps"]):
                if cursor + bs > n:
                    perm, cursor = torch.randperm(n, generator=gen, device=dev), 0
                idx = perm[cursor:cursor + bs]
                cursor += bs
                xu, y = X[idx], Y[idx]
                delta = defensive_noise(model, _to_float(xu), y, p, self.robust_inner, gen)
                xd = _to_float(_quantized(xu, delta, eps))  # train on the stored (quantized) images
                xa = augment(xd, p["aug_pad"], p["aug_flip"], gen)
                model.eval()
                da = pgd_attack(model, xa, y, p["rho_a"], p["atk_steps"], p["atk_step_size"], gen)
                model.train()
                for g in opt.param_groups:
                    g["lr"] = p["lr"] * p["lr_decay"] ** (step // p["lr_decay_every"])
                out = model(xa + da)
                loss = F.cross_entropy(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                robust_acc = float((out.argmax(1) == y).float().mean())
                if step >= p["train_steps"] - tail:
                    tail_loss += float(loss.detach()) / tail
                    tail_acc += robust_acc / tail
                task.advance(1, loss=float(loss.detach()), acc=robust_acc)
        finally:
            task.close()
        out_u8 = torch.empty_like(train.images)
        nb = (n + bs - 1) // bs
        task = ctx.progress.task(f"{self.name}: final noise", total=nb)
        try:
            for b in range(nb):
                sl = slice(b * bs, (b + 1) * bs)
                delta = defensive_noise(model, _to_float(X[sl]), Y[sl], p, self.robust_inner, gen)
                out_u8[sl] = _quantized(X[sl], delta, eps).cpu()
                task.advance(1)
        finally:
            task.close()
        # No stopping criterion in the papers (a fixed step budget), so no ``converged``: the final robust
        # loss and accuracy of the surrogate on its own (noised, augmented, attacked) batches say how far
        # it got, and the clean-vs-protected accuracy of the final surrogate how much the noise helps it.
        info = {"train_steps": p["train_steps"], "surrogate_robust_batch_acc": robust_acc,
                "final_robust_loss": tail_loss, "final_robust_acc": tail_acc,
                "surrogate_acc_clean": evaluate(model, X, Y, bs),
                "surrogate_acc_protected": evaluate(model, out_u8.to(dev), Y, bs)}
        return out_u8, info, model


class REM(SEM):
    name = "rem"
    summary = "robust error-minimizing noise: EMN against an adversarially trained surrogate, PGD inner max"
    robust_inner = True


@hookimpl
def arena_register_protectors(register) -> None:
    register(SEM)
    register(REM)
