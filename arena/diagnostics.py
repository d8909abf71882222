"""Protect-stage diagnostics: did the protector reach its own criterion, and how learnable is its noise?

Two sources, kept apart because they deserve different trust:

- the protector's own report (``Protector.last_info`` after ``protect``): rounds, losses, whether its stop
  criterion was met (``converged``). A stage whose protector says ``converged: False`` is marked ``weak``
  in every row that uses it, so a board never ranks a half-finished noise as the method's result.
- the arena's own measurement, which a plugin cannot influence: the train accuracy of a linear classifier
  fitted to the **noise alone** (protected minus clean) against the labels. Availability poisons work by
  planting a shortcut that is easier to learn than the image content, and Yu et al. (KDD 2022, "Availability
  attacks create shortcuts") show that the effective ones are close to linearly separable. A noise whose
  separability is near chance carries no class shortcut whatever the protector reports; the quick
  tournament's seed-to-seed spread (issue 19) is read against this number.
- and the noise's **class share**: the fraction of its energy in its per-class means. Separability saturates
  at 1.0 for every protector that plants a shortcut at all; the class share goes on telling them apart. On the
  quick grid's SEM/REM sets the victim's accuracy fell as the class share rose (Spearman -0.68 over 36
  protected sets, BENCHMARKS.md, "SEM and REM: the defensive steps"), while separability was 1.0 on all.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
import torch.nn.functional as F

from .params import ArenaError


def protector_info(raw: Any, who: str) -> dict[str, Any]:
    """The protector's ``last_info`` as a JSON-safe dict (floats that are not finite become None), so a
    plugin's report can never break a row; a non-dict is a contract error."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ArenaError(f"{who}: last_info must be a dict of diagnostics, got {type(raw).__name__}")
    try:
        text = json.dumps(raw, default=_plain, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ArenaError(f"{who}: last_info is not JSON-serializable ({e})") from None
    return _finite(json.loads(text))


def is_weak(info: dict[str, Any] | None) -> bool:
    """A stage is weak when its protector says it stopped short of its own criterion."""
    return bool(info) and info.get("converged") is False


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return str(v)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def noise_separability(clean: torch.Tensor, protected: torch.Tensor, labels: torch.Tensor, *,
                       steps: int = 200, max_images: int = 4096, seed: int = 0) -> float | None:
    """Accuracy, on a held-out quarter of the images, of a linear softmax classifier fitted to the noise
    alone (uint8 difference / 255) of the other three quarters.

    Full-batch Adam on standardized features, a fixed number of steps and a fixed seed: deterministic and
    about a second for a few thousand images, so it runs on every protect stage. ``None`` when there is no
    noise at all (the ``none`` protector), too few images or fewer than two classes."""
    n = clean.shape[0]
    k = int(labels.max()) + 1 if n else 0
    if n < 8 or k < 2:
        return None
    if n > max_images:  # a fixed, seeded subset keeps the cost flat on CIFAR-size splits
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images]
        clean, protected, labels = clean[idx], protected[idx], labels[idx]
    x = (protected.flatten(1).float() - clean.flatten(1).float()) / 255.0
    if not bool(x.abs().max() > 0):
        return None
    y = labels.long()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=g)
    cut = (3 * x.shape[0]) // 4
    fit, held = order[:cut], order[cut:]
    mu, sd = x[fit].mean(0), x[fit].std(0).clamp_min(1e-6)
    x = (x - mu) / sd
    # Gathered and transposed once. Logits as (k x d) @ (d x n): on a CPU the skinny (n x d) @ (d x k) product
    # and its gradient ran 5x slower (one AMD EPYC core: 2.1 -> 0.35 ms at 973 x 768 x 10).
    x_fit_t, y_fit = x[fit].t().contiguous(), y[fit]
    w = (torch.randn(x.shape[1], k, generator=g) * 0.01).requires_grad_(True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.01)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy((w.t() @ x_fit_t).t() + b, y_fit) + 1e-3 * (w * w).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float(((x[held] @ w + b).argmax(1) == y[held]).float().mean())


def noise_class_share(clean: torch.Tensor, protected: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Share of the noise's energy (sum of squares, in [0,1] units) that lies in its per-class means: 1.0 for
    class-wise noise, about 1/(images per class) for independent sample-wise noise. ``None`` when there is
    no noise. Cheap (one pass) and read from the data alone, so a plugin cannot report it for itself. A shift
    common to every class (the same offset on all images) counts as class-mean energy too, as it did in the
    measurement the docstring above quotes: read it beside the separability, which such a shift leaves at chance."""
    d = protected.flatten(1).float().sub_(clean.flatten(1).float()).div_(255.0)
    energy = float(d.pow(2).sum())
    if energy <= 0:
        return None
    y = labels.long()
    k = int(y.max()) + 1
    sums = torch.zeros(k, d.shape[1]).index_add_(0, y, d)
    counts = torch.bincount(y, minlength=k).clamp_min(1).unsqueeze(1).float()
    # sum over classes of n_c * |mean_c|^2 = sum_c |sum_c|^2 / n_c
    return float((sums.pow(2) / counts).sum()) / energy
