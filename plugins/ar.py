"""Autoregressive perturbations (AR; Sandoval-Segura et al., "Autoregressive Perturbations for Data Poisoning",
NeurIPS 2022).

Each class owns a 2-D autoregressive process: in every channel, a pixel is a fixed linear combination of
the 8 pixels before it in its 3 x 3 window (row-major order). Every image gets its own noise from its
class's process, yet one 3 x 3 filter (the coefficients with -1 at the current pixel) maps all of that
class's noise to zero and other classes' noise to large values: a shortcut a CNN's first layer can read.
Following the reference code (github.com/psandovalsegura/autoregressive-poisoning: ``autoregressive.py``,
``autoregressive_param_finder.py``, ``create_ar_poisons_3channel.py``)::

    coefficients, per class and channel: b ~ N(0, 1)^(3x3), b[2,2] = 0, b <- b / sum(b)
      kept only if 3 generated signals stay finite with raw L2 <= 50 (36 x 36, crop 4), and the lowest
      response sum(relu(conv(signal, filter_j))) of every already kept class j's filter is >= 10
    noise of one image of class k: start ~ N(0, 1) of (C, H+4, W+4); run class k's process over it
      (each pixel from row 2, column 2 on is rewritten from its window); drop the first 4 rows and columns;
      scale to L2 radius r
    r = 1.0 in [0,1] units on 3 x 32 x 32 (CIFAR-10), 3.0 on 96 px STL-10

The degenerate-coefficient guard. Upstream's CIFAR-100 class 9 had coefficients whose generated signal
contained NaN: the finder tested only the last trial's norm for NaN (``NaN > bound`` is False), so the
process was kept and the whole class's poisoned images came out black. Here a candidate is kept only if
*every* trial is finite with a norm in (0, bound] at 36 px and also at the protected image's own size, and
``protect`` refuses (one-line error naming the class) rather than store an image whose noise is not finite
or is zero; the tests check that no class's noise degenerates.

Defaults and units: upstream's radius is on [0,1] images (``ToTensor``), so L2 1.0 at 3 x 32 x 32. The
default ``l2=None`` keeps the per-pixel RMS on other sizes, as the paper does for STL-10:
r = sqrt(C*H*W / 3072) (0.5 on 3 x 16 x 16); ``l2`` sets an absolute radius.

Differences from the reference, on purpose:
- upstream ships coefficients found once by its finder (10 classes for CIFAR-10/SVHN/STL-10, 100 for
  CIFAR-100); the arena runs the same finder, seeded, for any number of classes, and reports the chosen
  coefficients in ``last_info``;
- the process runs on all images of a batch at once (one step per pixel position, not per image);
- the stored image is rounded (the reference adds 0.5 and truncates: the same) and an image whose rounded
  change would leave the L2 ball is shrunk onto it, so the declared radius holds on the uint8 images.

Cost: at the default ``min_response=10`` the finder tries 1-2 x 10^5 candidates for 10 classes (2-3 minutes
on a 2-core AMD EPYC; upstream's finder budget is 10^6); ``min_response=5`` finds them in seconds.

Small images (digits 16 px, cnn-small victim, 15 epochs, crop pad 2 + flip; clean 94.6 %): the default radius
0.5 leaves the victim at 96.1 %, 1.0 at 89.6 %, 2.0 at 31.8 %. Digits are learned from content in an epoch or
two, and 29 % of their pixels are black, where clamping drops the negative half of the noise and breaks the AR
structure the shortcut relies on. The tests use ``l2=2.0, min_response=5``; CIFAR-size runs keep 1.0.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from arena import ArenaError, Budget, ImageSet, Param, ParamSpec, Protector, hookimpl

from .l2_common import quantize_l2, scaled_radius, unit_l2

FINDER_SIZE = 36  # the reference finder's signal side (36 px, crop 4: the 32 px CIFAR perturbation)


class AR(Protector):
    name = "ar"
    summary = "class-wise autoregressive-process noise, sample-wise draws (Sandoval-Segura et al., NeurIPS 2022)"
    version = "1"
    params = ParamSpec((
        Param("l2", float, None, "L2 radius in [0,1] units; None: sqrt(C*H*W / 3072), 1.0 at 3x32x32",
              low=0.0, high=1000.0, optional=True),
        Param("crop", int, 4, "leading rows/columns of the AR signal dropped (the random start)", low=2, high=64),
        Param("trials", int, 3, "signals generated per candidate process to test that it stays bounded",
              low=1, high=100),
        Param("norm_bound", float, 50.0, "largest raw L2 of a test signal (36 px) a kept process may reach",
              low=0.0, high=1e6),
        Param("min_response", float, 10.0, "lowest response of another class's filter to a kept process",
              low=0.0, high=1e6),
        Param("max_candidates", int, 1_000_000, "candidate processes sampled before giving up", low=1,
              high=100_000_000),
        Param("batch_size", int, 4096, "images whose noise is generated at once", low=1, high=1_000_000),
    ))
    check_params: ClassVar[dict[str, Any]] = {"min_response": 5.0}  # seconds, not minutes, of search

    def radius(self, shape: tuple[int, int, int]) -> float:
        return self.p["l2"] if self.p["l2"] is not None else scaled_radius(1.0, shape)

    def budget(self, train: ImageSet) -> Budget:
        return Budget("l2", self.radius(train.shape))

    def protect(self, train: ImageSet, ctx: Any) -> ImageSet:
        c, h, w = train.shape
        crop = self.p["crop"]
        gen = ctx.generator(5309, device="cpu")
        coeffs, found = find_processes(train.num_classes, c, (h + crop, w + crop), self.p, gen)
        deltas = torch.empty(train.images.shape)
        for i in range(0, len(train), self.p["batch_size"]):
            sl = slice(i, min(i + self.p["batch_size"], len(train)))
            sig, _ = generate(coeffs[train.labels[sl]], (h + crop, w + crop), gen, crop=crop)
            deltas[sl] = unit_l2(sig)
        _refuse_degenerate(deltas, train.labels)
        r = self.radius(train.shape)
        out = quantize_l2(train.images, deltas * r, r)
        self.last_info = {"l2": r, "crop": crop, **found,
                          "coefficients": [[[round(float(v), 5) for v in ch.flatten()[:8]] for ch in k]
                                           for k in coeffs]}
        return train.with_images(out, origin=f"protected:{self.name}")


def generate(coeffs: torch.Tensor, size: tuple[int, int], gen: torch.Generator, *, crop: int = 0,
             bound: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Signals of the AR processes ``coeffs`` (M x C x 3 x 3, entry [2, 2] zero): a N(0,1) start of ``size``
    whose every pixel from row 2 and column 2 on is rewritten, in row-major order, as the coefficient-
    weighted sum of its 3 x 3 window. Depth-wise: each channel has its own process.

    Returns the signals without their first ``crop`` rows and columns (M x C x H-crop x W-crop) and a mask
    of the ones kept alive: with ``bound``, a signal stops being computed (and is marked dead) as soon as one
    value of its kept part exceeds ``bound`` in size, since its norm then exceeds it too. That is what makes
    the finder affordable: most random coefficient sets blow up within a few rows."""
    m, c = coeffs.shape[:2]
    h, w = size
    sig = torch.randn((m, c, h, w), generator=gen)
    alive = torch.arange(m)
    top = coeffs[:, :, :2, :].reshape(m, c, 6)  # the window's two rows above the current one
    left2, left1 = coeffs[:, :, 2, 0], coeffs[:, :, 2, 1]
    for r in range(2, h):
        sub = sig[alive]
        # contributions of rows r-2 and r-1 for every column at once: M x C x (W-2)
        above = sub[:, :, r - 2 : r, :].unfold(-1, 3, 1)  # M x C x 2 x (W-2) x 3
        pre = (above.permute(0, 1, 3, 2, 4).reshape(len(alive), c, w - 2, 6) * top[alive, :, None, :]).sum(-1)
        row = sub[:, :, r, :]
        a2, a1 = left2[alive], left1[alive]
        for j in range(w - 2):
            row[:, :, j + 2] = pre[:, :, j] + a2 * row[:, :, j] + a1 * row[:, :, j + 1]
        sig[alive, :, r, :] = row
        if bound is not None and r >= crop:
            blown = ~(row[:, :, crop:].abs() <= bound).flatten(1).all(dim=1)
            alive = alive[~blown]
            if len(alive) == 0:
                break
    keep = torch.zeros(m, dtype=torch.bool)
    keep[alive] = True
    return sig[:, :, crop:, crop:], keep


def matching_filter(coeffs: torch.Tensor) -> torch.Tensor:
    """The 1 x C x 3 x 3 filter that maps its own process's signal to zero (coefficients, -1 at [2, 2])."""
    f = coeffs.clone()
    f[:, 2, 2] = -1.0
    return f.unsqueeze(0)


def find_processes(k: int, channels: int, size: tuple[int, int], p: dict[str, Any], gen: torch.Generator
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """k coefficient sets (k x C x 3 x 3) by the reference finder's rule, plus what the search did: candidates
    in turn; one is kept if every trial signal stays finite and bounded and the filters of all processes
    kept before it respond to its signal with at least ``min_response``."""
    kept: list[torch.Tensor] = []
    lowest: list[float] = []
    tried = bounded = 0
    crop, bound = p["crop"], p["norm_bound"]
    finder = (FINDER_SIZE, FINDER_SIZE)
    while len(kept) < k and tried < p["max_candidates"]:
        n = min(1024, p["max_candidates"] - tried)
        tried += n
        cand = torch.randn((n, channels, 3, 3), generator=gen)
        cand[:, :, 2, 2] = 0.0
        cand = cand / cand.sum(dim=(-1, -2), keepdim=True)
        idx = torch.nonzero(torch.isfinite(cand).flatten(1).all(dim=1)).flatten()
        test = torch.empty(0)
        for _ in range(p["trials"]):  # every trial, not only the last, must stay finite and bounded
            sig, alive = generate(cand[idx], finder, gen, crop=crop, bound=bound)
            norms = sig.flatten(1).norm(dim=1)
            good = alive & torch.isfinite(sig).flatten(1).all(dim=1) & (norms > 0) & (norms <= bound)
            idx, test = idx[good], sig[good]
        bounded += len(idx)
        for row, i in enumerate(idx.tolist()):
            resp = float("inf")
            if kept:
                signal = unit_l2(test[row : row + 1])
                resp = min(float(F.relu(F.conv2d(signal, matching_filter(b))).sum()) for b in kept)
                if resp < p["min_response"]:
                    continue
            if size != finder and not _bounded_at(cand[i], size, p["trials"], gen):
                continue
            if kept:
                lowest.append(resp)
            kept.append(cand[i])
            if len(kept) == k:
                break
    if len(kept) < k:
        raise ArenaError(f"protector 'ar': found {len(kept)} of {k} AR processes in {tried} candidates "
                         f"(param 'max_candidates'); lower 'min_response' or raise 'max_candidates'")
    return torch.stack(kept), {"candidates_tried": tried, "bounded_candidates": bounded,
                               "lowest_other_response": min(lowest) if lowest else None}


def _bounded_at(coeffs: torch.Tensor, size: tuple[int, int], trials: int, gen: torch.Generator) -> bool:
    """The process stays finite and non-zero on the protected image's own size (upstream used its 36 px
    coefficients on 100 px STL-10 too; a process can be tame at 36 px and overflow further out)."""
    sig, _ = generate(coeffs.expand(trials, *coeffs.shape), size, gen)
    norms = sig.double().flatten(1).norm(dim=1)
    return bool(torch.isfinite(sig).all() and (norms > 0).all() and torch.isfinite(norms).all())


def _refuse_degenerate(deltas: torch.Tensor, labels: torch.Tensor) -> None:
    norms = deltas.flatten(1).norm(dim=1)
    bad = ~torch.isfinite(deltas).flatten(1).all(dim=1) | ~(norms > 0.5)
    if bool(bad.any()):
        k = int(labels[torch.nonzero(bad).flatten()[0]])
        raise ArenaError(f"protector 'ar': class {k}'s AR noise degenerated (not finite or zero) on "
                         f"{int(bad.sum())} images; refusing to store them")


@hookimpl
def arena_register_protectors(register) -> None:
    register(AR)
