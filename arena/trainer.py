"""The victim trainer: the papers' "unauthorized trainer", run once per cell, so it is the hot loop.

The whole train split is one uint8 tensor on the device; each step indexes a batch, converts it to
float there, and augments it in one batched op. No DataLoader, no per-sample Python. Exploiters change
the recipe through :class:`arena.TrainingMod` objects; early stopping needs no stored checkpoints
because the clean test accuracy of every epoch is already measured.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from .augment import crop_flip
from .contracts import TrainingMod
from .data import ImageSet
from .params import ArenaError, Param, ParamError, ParamSpec
from .precision import resolve_amp
from .progress import Progress
from .robust import robust_accuracy


class TrainingDiverged(ArenaError):
    pass


RECIPE_PARAMS = ParamSpec((
    Param("epochs", int, 60, "passes over the train split", low=1),
    Param("batch_size", int, 128, low=1),
    Param("lr", float, 0.1, "peak SGD learning rate", low=0.0),
    Param("momentum", float, 0.9, low=0.0, high=1.0),
    Param("weight_decay", float, 5e-4, low=0.0),
    Param("schedule", str, "cosine", "learning-rate schedule: cosine to 0, constant, or step (x gamma at each "
          "milestone)", choices=("cosine", "constant", "step")),
    Param("milestones", tuple, (), "schedule 'step': the epochs (increasing, 1..epochs-1) where lr is multiplied "
          "by gamma, e.g. [75, 90]", low=1),
    Param("gamma", float, 0.1, "schedule 'step': the factor applied at each milestone", low=0.0, high=1.0),
    Param("crop_pad", int, 4, "random-crop padding in pixels (0: no crop)", low=0),
    Param("flip", bool, True, "random horizontal flip"),
    Param("eval_batch_size", int, 1024, low=1),
    Param("amp", str, "auto", "bf16 autocast: auto = on for CUDA, on a CPU only where measured faster",
          choices=("auto", "on", "off")),
    Param("channels_last", str, "auto", "NHWC layout: auto = on", choices=("auto", "on", "off")),
    Param("compile", bool, False, "torch.compile the model (GPU, long runs)"),
    Param("grad_clip", float, 0.0, "max grad norm, 0 = off", low=0.0),
))


@dataclass(frozen=True)
class Recipe:
    """Defaults are the seed papers' victim recipe (METHODS.md)."""

    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    crop_pad: int = 4
    flip: bool = True
    eval_batch_size: int = 1024
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        check_schedule(self.to_dict(), "recipe")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, owner: str = "recipe") -> Recipe:
        values = RECIPE_PARAMS.validate(values, owner)
        check_schedule(values, owner)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_schedule(values: dict[str, Any], owner: str) -> None:
    """The checks one parameter cannot make alone: milestones only mean something to ``step``, and one at
    or past the last epoch would never fire (a silent no-op that looks like a reproduced paper)."""
    ms, epochs = tuple(values.get("milestones", ())), values.get("epochs", 1)
    where = f"{owner}: param 'milestones' = {list(ms)}"
    if values.get("schedule") == "step":
        if not ms:
            raise ParamError(f"{owner}: schedule 'step' needs param 'milestones' (increasing epochs, e.g. [75, 90])")
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ParamError(f"{where}: expected strictly increasing epochs")
        if ms[0] < 1 or ms[-1] >= epochs:
            raise ParamError(f"{where}: expected epochs in 1..{epochs - 1} (epochs = {epochs})")
    elif ms:
        raise ParamError(f"{where}: milestones need schedule 'step' (schedule = {values.get('schedule')!r})")


def lr_factor(recipe: Recipe, epoch: float, progress: float) -> float:
    """The learning rate as a fraction of the peak, at fractional ``epoch`` (0-based) and training progress
    ``progress`` in [0, 1). ``step`` counts milestones passed like ``torch.optim.lr_scheduler.MultiStepLR``
    stepped once per epoch: milestone 75 makes epochs 0..74 train at lr and epoch 75 on at lr * gamma."""
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if recipe.schedule == "step":
        return recipe.gamma ** bisect.bisect_right(recipe.milestones, int(epoch))
    return 1.0


@dataclass
class TrainResult:
    clean_acc: float  # clean test accuracy after the last epoch
    best_acc: float  # peak clean test accuracy over epochs (an oracle stop)
    best_epoch: int
    acc_curve: list[float]
    train_acc: float  # accuracy on the (augmented) training batches of the last epoch
    seconds: float
    epochs: int
    selected_acc: float | None = None  # early stopping: test accuracy at the best-validation epoch
    selected_epoch: int | None = None
    val_curve: list[float] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    images_per_s: float = 0.0


def use_amp(flag: str, device: torch.device) -> bool:
    """bf16 autocast for a flag that is already decided: ``on``/``off``, or ``auto`` = on for CUDA only.

    On a CPU ``auto`` must be resolved by measuring the model first (``arena.precision.resolve_amp``, which
    :func:`train_victim` and ``grid.expand`` do): a CPU flag does not predict speed. bf16 trained resnet18
    at 32 px 2.4x faster on 2 AMD EPYC cores (72 -> 171 img/s), but on a 2-core Intel Xeon with avx512_bf16
    and no AMX it was slower (resnet18 50 img/s bf16 vs 68 fp32; cnn-small 1,750 vs 2,088) and it changes
    the numbers, so an unmeasured ``auto`` on a CPU stays in float32."""
    return flag == "on" or (flag == "auto" and device.type == "cuda")


def use_channels_last(flag: str, device: torch.device) -> bool:
    """NHWC memory layout: ``auto`` turns it on everywhere (oneDNN and cuDNN convolutions both prefer it)."""
    return flag == "on" or flag == "auto"


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024,
             amp: bool = False, channels_last: bool = False) -> float:
    """Accuracy of ``model`` (eval mode) on uint8 images already on the model's device."""
    was_training = model.training
    model.eval()
    correct = 0
    dev = images.device
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].float().div_(255.0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        correct += int((out.argmax(1) == labels[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, images.shape[0])


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train_idx, val_idx) for early stopping's validation split."""
    gen = torch.Generator().manual_seed(seed + 7919)
    perm = torch.randperm(n, generator=gen)
    k = max(1, int(round(fraction * n)))
    return torch.sort(perm[k:]).values, torch.sort(perm[:k]).values


def with_clean_share(val_x: torch.Tensor, va_idx: torch.Tensor, clean: ImageSet | None, train: ImageSet,
                     ratio: float, seed: int) -> torch.Tensor:
    """The validation images with a seeded ``ratio`` of them replaced by the clean originals."""
    if clean is None or len(clean) != len(train) or not torch.equal(clean.labels, train.labels):
        raise ArenaError(f"clean_val_ratio = {ratio}: needs the clean train split this data was made from, "
                         "image for image (a tournament cell or arena train; not a bare train_victim call)")
    gen = torch.Generator().manual_seed(seed + 104729)
    k = int(round(ratio * len(va_idx)))
    pick = torch.randperm(len(va_idx), generator=gen)[:k]
    out = val_x.clone()
    out[pick] = clean.images[va_idx[pick]]
    return out


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


def train_victim(
    model: torch.nn.Module,
    train: ImageSet,
    test: ImageSet | None,
    recipe: Recipe | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    mods: list[TrainingMod] | None = None,
    progress: Progress | None = None,
    description: str = "train",
    clean_train: ImageSet | None = None,
) -> TrainResult:
    """Train ``model`` on ``train`` with the recipe changed by ``mods``; evaluate on ``test`` each epoch.

    Deterministic for a seed on CPU: shuffling and augmentation draw from one seeded generator.
    ``clean_train`` is the clean split ``train`` was made from, image for image; only a mod's
    ``clean_val_ratio`` reads it (clean images in the validation split), and no plugin code ever sees it.
    """
    device = torch.device(device)
    recipe = recipe or Recipe()
    mods = list(mods or [])
    if recipe.amp == "auto":  # decided before the mods see the recipe (adversarial training attacks in it)
        on = resolve_amp("auto", device, model, train.shape, train.num_classes, recipe.batch_size,
                         channels_last=use_channels_last(recipe.channels_last, device))
        recipe = replace(recipe, amp="on" if on else "off")
    for m in mods:
        m.num_classes = train.num_classes
        recipe = m.configure(recipe)
    amp = use_amp(recipe.amp, device)
    first = [m for m in mods if getattr(m, "before_crop_flip", False)]
    then = [m for m in mods if not getattr(m, "before_crop_flip", False)]
    chl = use_channels_last(recipe.channels_last, device)
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)

    x_all, y_all = train.images, train.labels
    holdout = max([m.holdout_fraction for m in mods] + [0.0])
    patience = max([getattr(m, "patience", 0) for m in mods] + [0])
    clean_ratio = max([getattr(m, "clean_val_ratio", 0.0) for m in mods] + [0.0])
    val_x = val_y = None
    if holdout > 0:
        tr_idx, va_idx = holdout_split(len(train), holdout, seed)
        val_x, val_y = x_all[va_idx], y_all[va_idx].to(device)
        if clean_ratio > 0:
            val_x = with_clean_share(val_x, va_idx, clean_train, train, clean_ratio, seed)
        val_x = val_x.to(device)
        x_all, y_all = x_all[tr_idx], y_all[tr_idx]
    X, Y = x_all.to(device), y_all.to(device)
    if test is not None:
        TX, TY = test.images.to(device), test.labels.to(device)

    model = model.to(device)
    if chl:
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if recipe.compile else model
    opt = make_optimizer(model, recipe)
    n = X.shape[0]
    bs = min(recipe.batch_size, n)
    steps_per_epoch = n // bs if n % bs < 2 else n // bs + 1  # a batch of 1 breaks BatchNorm
    total = recipe.epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        return recipe.lr * lr_factor(recipe, step // steps_per_epoch, step / total)

    curve: list[float] = []
    val_curve: list[float] = []
    train_acc = 0.0
    step = 0  # counts optimizer steps actually taken (early stopping may end the run before ``total``)
    t0 = time.perf_counter()
    task = (progress or Progress()).task(description, total=recipe.epochs)
    model.train()
    try:
        for _epoch in range(recipe.epochs):
            for m in mods:
                m.start_epoch(_epoch)
            perm = torch.randperm(n, generator=gen, device=device)
            correct = torch.zeros((), device=device)
            seen = 0
            loss_sum = torch.zeros((), device=device)
            for b in range(steps_per_epoch):
                idx = perm[b * bs : (b + 1) * bs]
                xb = X[idx].float().div_(255.0)
                yb = Y[idx]
                target = yb
                for m in first:
                    xb, target = m.transform_batch(xb, target, gen)
                xb = crop_flip(xb, recipe.crop_pad, recipe.flip, gen)
                for m in then:
                    xb, target = m.transform_batch(xb, target, gen)
                for m in mods:
                    xb = m.perturb_batch(run_model, xb, target, gen)
                if chl:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = run_model(xb)
                    loss = F.cross_entropy(out.float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                opt.step()
                step += 1
                hard = target if target.dim() == 1 else target.argmax(1)
                correct += (out.detach().argmax(1) == hard).sum()
                loss_sum += loss.detach() * xb.shape[0]
                seen += xb.shape[0]
            epoch_loss = float(loss_sum) / max(seen, 1)
            if not math.isfinite(epoch_loss):
                raise TrainingDiverged(f"{description}: training loss became {epoch_loss} in epoch {_epoch + 1}")
            train_acc = float(correct) / max(seen, 1)
            info: dict[str, Any] = {"loss": epoch_loss}
            if test is not None:
                curve.append(evaluate(model, TX, TY, recipe.eval_batch_size, amp, chl))
                info["test"] = curve[-1]
            if val_x is not None:
                val_curve.append(evaluate(model, val_x, val_y, recipe.eval_batch_size, amp, chl))
                info["val"] = val_curve[-1]
            task.advance(1, **info)
            if patience and len(val_curve) - 1 - max(range(len(val_curve)), key=val_curve.__getitem__) >= patience:
                break  # no better validation accuracy for ``patience`` epochs: the attacker stops here
    finally:
        task.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    extra: dict[str, float] = {}
    if patience and val_x is not None:
        extra["stopped_epoch"] = float(len(val_curve))
    specs = [m.robust_eval for m in mods if getattr(m, "robust_eval", None) is not None]
    if test is not None and specs:  # the arena attacks the victim; no plugin code sees the test split
        if len(specs) > 1:
            raise ArenaError("more than one exploiter asks for a robust evaluation; combine at most one")
        extra["robust_acc"] = robust_accuracy(model, TX, TY, specs[0], gen, amp)
    best_epoch = max(range(len(curve)), key=lambda i: curve[i]) if curve else -1
    sel_epoch = max(range(len(val_curve)), key=lambda i: val_curve[i]) if val_curve else None
    return TrainResult(
        clean_acc=curve[-1] if curve else float("nan"),
        best_acc=curve[best_epoch] if curve else float("nan"),
        best_epoch=best_epoch + 1,
        acc_curve=curve,
        train_acc=train_acc,
        seconds=seconds,
        epochs=recipe.epochs,
        selected_acc=curve[sel_epoch] if (sel_epoch is not None and curve) else None,
        selected_epoch=sel_epoch + 1 if sel_epoch is not None else None,
        val_curve=val_curve,
        extra=extra,
        images_per_s=step * bs / max(seconds, 1e-9),
    )


def with_epochs(recipe: Recipe, epochs: int) -> Recipe:
    """``recipe`` run for ``epochs``: step milestones keep their place relative to the run (75/90 of 100
    epochs become 15/18 of 20), so a shortened run (a surrogate, a smoke test) decays as the long one does.
    Milestones that fall together or past the end are dropped; a step schedule left with none is constant."""
    if recipe.schedule != "step":
        return replace(recipe, epochs=epochs)
    scaled = sorted({round(m * epochs / recipe.epochs) for m in recipe.milestones})
    ms = tuple(m for m in scaled if 1 <= m < epochs)
    return replace(recipe, epochs=epochs, milestones=ms, schedule="step" if ms else "constant")
