"""Shared machinery of the two error-minimizing-noise protectors (Huang et al., ICLR 2021).

Not an entry point: ``plugins/emn_samplewise.py`` and ``plugins/emn_classwise.py`` import it. Both
alternate the same two moves on one surrogate, so they share the surrogate's optimizer, the batch
schedule, the min-min PGD step, the stop test and the on-disk cache (``plugins/sem.py`` uses the
cache helpers too, so every surrogate-based protector stores its output the same way).

The data stay one uint8 tensor on ``ctx.device`` and the noise one float tensor beside it: a model step
and a PGD step each index a batch and convert it there, with no per-sample Python. This is what makes
the method affordable on CPU (the reference code loops over the images of every batch in Python and
moves every sample's noise through NumPy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from arena import Budget, ImageSet, Param, Protector

LARGE = 64  # images whose side exceeds this get the paper's 16/255 budget instead of 8/255


def auto_eps(train: ImageSet) -> float:
    """The paper's budget for the image size: 8/255 up to 64 px (CIFAR, SVHN), 16/255 above (ImageNet)."""
    _, h, w = train.shape
    return (16 if max(h, w) > LARGE else 8) / 255.0


def common_params(stop_error: float, pgd_steps: int, max_rounds: int) -> tuple[Param, ...]:
    """Params both variants share; the paper's values are the defaults, the variant sets the three that differ."""
    return (
        Param("eps", float, None, "L-inf radius in [0,1] units; None = 8/255 up to 64 px, 16/255 above",
              low=0.0, high=1.0, optional=True),
        Param("step", float, None, "PGD step size in [0,1] units; None = eps/10", low=0.0, high=1.0, optional=True),
        Param("pgd_steps", int, pgd_steps, "sign-gradient descent steps per batch in each noise round", low=1),
        Param("model_steps", int, 10, "surrogate SGD steps (M) before each noise round", low=0),
        Param("surrogate", str, "resnet18", "registered architecture of the surrogate trained from scratch"),
        Param("batch_size", int, 512, "batch size of both the surrogate steps and the noise updates", low=1),
        Param("lr", float, 0.1, "surrogate SGD learning rate (kept constant)", low=0.0),
        Param("momentum", float, 0.9, "surrogate SGD momentum", low=0.0, high=1.0),
        Param("weight_decay", float, 5e-4, "surrogate SGD weight decay", low=0.0),
        Param("grad_clip", float, 5.0, "surrogate max gradient norm; 0 = off", low=0.0),
        Param("stop_error", float, stop_error, "stop once the surrogate's error on x+delta is below this",
              low=0.0, high=1.0),
        Param("max_rounds", int, max_rounds,
              "safety bound on (model steps + noise pass) rounds; hitting it is reported", low=1),
    )


def resolved(p: dict[str, Any], train: ImageSet) -> tuple[float, float]:
    """(eps, step) with the "auto" values filled in for this image size."""
    eps = auto_eps(train) if p["eps"] is None else p["eps"]
    step = eps / 10.0 if p["step"] is None else p["step"]
    return eps, step


# -- surrogate -------------------------------------------------------------------------------------

def make_surrogate(p: dict[str, Any], train: ImageSet, ctx: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = ctx.build_model(p["surrogate"], train, seed=ctx.seed)
    opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
    return model, opt


class BatchCycler:
    """Seeded shuffled batches over ``n`` items, reshuffled after each pass, continuing across calls.

    A pass has ``n // bs`` batches, plus the remainder as one more batch unless it is a single item
    (a batch of one breaks BatchNorm in train mode on 1x1 feature maps)."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> None:
        self.n, self.bs, self.gen, self.device = n, min(batch_size, n), gen, device
        self.per_pass = n // self.bs if n % self.bs < 2 else n // self.bs + 1
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def _new_pass(self) -> None:
        self._perm = torch.randperm(self.n, generator=self.gen, device=self.gen.device).to(self.device)
        self._pos = 0

    def next(self) -> torch.Tensor:
        if self._perm is None or self._pos >= self.per_pass:
            self._new_pass()
        idx = self._perm[self._pos * self.bs : (self._pos + 1) * self.bs]
        self._pos += 1
        return idx

    def one_pass(self) -> Iterator[torch.Tensor]:
        """A fresh full pass (all items, the last batch possibly short), independent of ``next``."""
        perm = torch.randperm(self.n, generator=self.gen, device=self.gen.device).to(self.device)
        for i in range(0, self.n, self.bs):
            yield perm[i : i + self.bs]


def model_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: BatchCycler, steps: int,
                X: torch.Tensor, Y: torch.Tensor, noise_of: Callable[[torch.Tensor], torch.Tensor],
                grad_clip: float) -> None:
    """M plain SGD steps on clamp(x + delta) in train mode (BatchNorm batch statistics), no augmentation."""
    model.train()
    for _ in range(steps):
        idx = batches.next()
        xb = (X[idx].float().div_(255.0) + noise_of(idx)).clamp_(0.0, 1.0)
        loss = F.cross_entropy(model(xb), Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode (BatchNorm running statistics) and no parameter gradients while the noise is optimized."""
    was = model.training
    flags = [q.requires_grad for q in model.parameters()]
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    try:
        yield model
    finally:
        for q, f in zip(model.parameters(), flags):
            q.requires_grad_(f)
        model.train(was)


def min_min(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, eps: float,
            step: float, steps: int) -> torch.Tensor:
    """``steps`` of x' <- clamp(x' - step*sign(grad CE(f(x'), y)), 0, 1) with delta = clamp(x' - x, +-eps).

    As in the reference tool, the returned delta is clipped to eps but not to the pixel range (the
    pixel clamp acts on x'); quantization clamps the stored image, so this changes nothing for
    sample-wise noise and keeps the class mean of class-wise noise unbiased at saturated pixels.
    The loss is summed, not averaged: the sign is the same and small per-sample gradients underflow less.
    """
    for _ in range(steps):
        xp = (x + delta).clamp_(0.0, 1.0).requires_grad_(True)
        loss = F.cross_entropy(model(xp), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xp)
        delta = (xp.detach() - step * g.sign() - x).clamp_(-eps, eps)
    return delta


class ModelData(NamedTuple):
    """The images the surrogate's model steps draw batches from, with the noise each one carries."""

    batches: BatchCycler
    X: torch.Tensor
    Y: torch.Tensor
    noise_of: Callable[[torch.Tensor], torch.Tensor]


def alternate(name: str, p: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
              batches: BatchCycler, X: torch.Tensor, Y: torch.Tensor,
              noise_of: Callable[[torch.Tensor], torch.Tensor], noise_pass: Callable[[], None],
              progress: Any, model_data: ModelData | None = None) -> dict[str, Any]:
    """The min-min loop both variants share: M model steps, one noise pass (frozen surrogate), the stop
    test on clamp(x + delta); until the surrogate's error is below ``stop_error`` or ``max_rounds``.
    The stop test runs on (X, Y); the model steps too unless ``model_data`` names other images (class-wise
    EMN trains the surrogate on the whole split and tests on its subset, as the reference does).
    Returns the run info (rounds, surrogate train accuracy, whether max_rounds was hit)."""
    steps_on = model_data or ModelData(batches, X, Y, noise_of)
    task = progress.task(f"{name} rounds", total=p["max_rounds"])
    err, rounds = 1.0, 0
    try:
        for rounds in range(1, p["max_rounds"] + 1):
            model_steps(model, opt, steps_on.batches, p["model_steps"], steps_on.X, steps_on.Y, steps_on.noise_of,
                        p["grad_clip"])
            with frozen(model):
                noise_pass()
            err = error_rate(model, X, Y, noise_of, p["batch_size"])
            task.advance(1, round=rounds, train_acc=1.0 - err)
            if err < p["stop_error"]:
                break
    finally:
        task.close()
    hit_max = err >= p["stop_error"]
    if hit_max:
        warn_max_rounds(name, rounds, err, p["stop_error"])
    return {"rounds": rounds, "surrogate_train_acc": 1.0 - err, "surrogate_error": err,
            "hit_max_rounds": hit_max, "converged": not hit_max,
            "criterion": f"surrogate error on x+delta < {p['stop_error']:g} within {p['max_rounds']} rounds"}


@torch.no_grad()
def error_rate(model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor,
               noise_of: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> float:
    """The stop test: the surrogate's error (eval mode) on clamp(x + delta) over the given images."""
    was = model.training
    model.eval()
    wrong = torch.zeros((), device=X.device)
    n = X.shape[0]
    for i in range(0, n, batch_size):
        idx = torch.arange(i, min(i + batch_size, n), device=X.device)
        xb = (X[idx].float().div_(255.0) + noise_of(idx)).clamp_(0.0, 1.0)
        wrong += (model(xb).argmax(1) != Y[idx]).sum()
    model.train(was)
    return float(wrong) / max(1, n)


def warn_max_rounds(name: str, rounds: int, err: float, stop_error: float) -> None:
    warnings.warn(f"{name}: stopped at max_rounds={rounds} with surrogate error {err:.4f} "
                  f"(target < {stop_error}); the noise may be weaker than the paper's", RuntimeWarning, stacklevel=3)


# -- cache -----------------------------------------------------------------------------------------

def cache_file(ctx: Any, name: str, version: str, train: ImageSet, p: dict[str, Any]) -> Path:
    """Key = plugin, version, content hash of the input, the resolved params and the cell seed. The code is
    not in the name: the arena gives every plugin code hash its own ``ctx.cache_path`` directory."""
    key = json.dumps({"params": p, "seed": ctx.seed, "version": version}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return ctx.cache_path(f"{name}-v{version}-{train.fingerprint()}-{digest}.pt")


def cached_protect(protector: Any, train: ImageSet, ctx: Any, key_params: dict[str, Any],
                   run: Callable[[], tuple[torch.Tensor, dict[str, Any], torch.nn.Module]]) -> ImageSet:
    """The protect() of every surrogate-based protector: a cache hit is one file read; otherwise ``run()``
    computes (images, info, surrogate), which are stored atomically. ``last_info`` says which happened."""
    path = cache_file(ctx, protector.name, protector.version, train, key_params)
    hit = load_cached(path, train)
    if hit is not None:
        images, info = hit
        protector.last_info = {**info, "cached": True}
    else:
        t0 = time.perf_counter()
        images, info, surrogate = run()
        info = {**info, "seconds": time.perf_counter() - t0}
        save_cached(path, images, info, surrogate)
        protector.last_info = {**info, "cached": False}
    return train.with_images(images, origin=f"protected:{protector.name}")


def load_cached(path: Path, train: ImageSet) -> tuple[torch.Tensor, dict[str, Any]] | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt or foreign file is recomputed, never trusted
        return None
    images = blob.get("images")
    if not isinstance(images, torch.Tensor) or images.shape != train.images.shape or images.dtype != torch.uint8:
        return None
    return images, json.loads(blob.get("info", "{}"))


def save_cached(path: Path, images: torch.Tensor, info: dict[str, Any], surrogate: torch.nn.Module) -> None:
    """Protected images, run info and the final surrogate, written atomically (temp file + rename)."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    state = {k: v.detach().cpu() for k, v in surrogate.state_dict().items()}
    torch.save({"images": images.cpu(), "info": json.dumps(info), "surrogate": state}, tmp)
    os.replace(tmp, path)


class EMNProtector(Protector):
    """What both EMN variants share: the size-dependent L-inf budget and a cached ``protect`` around the
    variant's ``_run(train, ctx, eps, step) -> (images, info, surrogate)``."""

    def budget(self, train: ImageSet) -> Budget:
        return Budget("linf", resolved(self.p, train)[0])

    def protect(self, train: ImageSet, ctx: Any) -> ImageSet:
        eps, step = resolved(self.p, train)
        return cached_protect(self, train, ctx, {**self.p, "eps": eps, "step": step},
                              lambda: self._run(train, ctx, eps, step))

    def _run(self, train: ImageSet, ctx: Any, eps: float, step: float
             ) -> tuple[torch.Tensor, dict[str, Any], torch.nn.Module]:
        raise NotImplementedError
