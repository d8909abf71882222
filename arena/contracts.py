"""The plugin contracts: what a protector and an exploiter are, and what the arena hands them.

This module plus ``docs``-style docstrings here are the single place the contracts are written down;
``plugins/classwise_noise.py`` (protector) and ``plugins/none.py`` are worked examples. See README "Writing a plugin".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .budget import Budget
from .data import ImageSet
from .params import ParamSpec
from .robust import RobustEval

if TYPE_CHECKING:
    from .context import Context


class _Plugin:
    """Shared parts: a name, declared params validated at construction, a version for cache keys."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[ParamSpec] = ParamSpec()
    version: ClassVar[str] = "1"  # bump when outputs change: it is part of every cache key
    kind: ClassVar[str] = "plugin"
    # Cheap, valid params for ``arena check-plugin`` (merged over the defaults when no ``--params`` is given):
    # the check runs the contract on tiny 16 px data on a CPU, so it must take seconds, while the defaults
    # are the paper's (thousands of ResNet-18 steps). Only the author knows which knobs make a run small.
    check_params: ClassVar[dict[str, Any]] = {}
    # True for a plugin whose output depends on ``ctx.recipe`` (a surrogate trained with the victim's recipe,
    # as ConfounderGAN's classifier): only then does a tournament hand it its own recipe and put that recipe
    # into the stage's cache key. Others see the default ``Recipe()``, so one protect stage still serves
    # tournaments that differ only in how the victim is trained.
    uses_recipe: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.p: dict[str, Any] = self.params.validate(params, owner=f"{self.kind} '{self.name}'")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.p})"


class Protector(_Plugin):
    """Turns the labeled train split into protected images of the same shape and labels.

    Contract: ``protect(train, ctx)`` returns an :class:`ImageSet` (or a uint8 tensor) with the same
    shape and labels; the arena checks it against ``budget(train)`` after uint8 quantization. The
    protector sees only the train split it protects: never the test split or the raw pool.

    Diagnostics: ``protect`` may leave a JSON-able dict in ``self.last_info`` (the arena resets it before
    each call). Every row built on the stage keeps it as ``protect_info``. Say whether the method reached
    its own stopping criterion with ``converged`` (bool) and name it in ``criterion``; ``converged: False``
    marks those rows ``weak`` on the board. Methods without a criterion (a fixed step budget) leave
    ``converged`` out and report their final losses instead.
    """

    kind: ClassVar[str] = "protector"
    last_info: dict[str, Any]

    def budget(self, train: ImageSet) -> Budget:
        raise NotImplementedError

    def protect(self, train: ImageSet, ctx: Context) -> ImageSet | torch.Tensor:
        raise NotImplementedError

    # Optional, for label-free encryption of unseen images (ConfounderGAN):
    supports_encoder: ClassVar[bool] = False

    def fit(self, train: ImageSet, ctx: Context) -> Encoder:
        raise NotImplementedError(f"protector '{self.name}' has no encoder")

    def load_encoder(self, path: Path, ctx: Context) -> Encoder:
        raise NotImplementedError(f"protector '{self.name}' has no encoder")


class Encoder:
    """A trained, saveable one-pass protector for new unlabeled images."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W in, uint8 out, within the protector's budget."""
        raise NotImplementedError

    def save(self, path: Path) -> None:
        raise NotImplementedError


class TrainingMod:
    """A change to the victim's training recipe. Every method is optional; defaults change nothing.

    Order inside a training step: base crop+flip -> ``transform_batch`` -> ``perturb_batch`` -> SGD step;
    a mod with ``before_crop_flip`` has its ``transform_batch`` run before the base crop+flip instead.
    """

    # True: this mod's ``transform_batch`` runs before the recipe's crop+flip (Fast AutoAugment in EMN's
    # and Fast AutoAugment's own code is the first transform of the pipeline, before RandomCrop).
    before_crop_flip: bool = False

    holdout_fraction: float = 0.0  # > 0: hold out this share of the protected train split as validation
    # Early stopping with a validation split: stop once validation accuracy has not improved for this many
    # epochs (0: train every epoch and only select the best one).
    patience: int = 0
    # This share of the held-out validation images is swapped for its clean originals by the arena (an
    # attacker holding some clean labeled data; SEM's Table 5). The plugin never receives clean images.
    clean_val_ratio: float = 0.0
    num_classes: int = 0  # set by the trainer before ``configure``: the K of N x K soft targets (MixUp, CutMix)

    def configure(self, recipe: Any) -> Any:
        """Return a changed recipe (e.g. more epochs); called once before training."""
        return recipe

    def start_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based), for recipes that change during training
        (UEraser attacks with several augmentations only in its first epochs)."""

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float N x C x H x W in [0,1] on the device; y: int64 labels or N x K soft targets."""
        return x, y

    def perturb_batch(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      gen: torch.Generator) -> torch.Tensor:
        """An inner maximization (adversarial training). The model arrives in train mode and must be
        returned in train mode."""
        return x

    # The robust evaluation this exploiter asks for (an :class:`arena.robust.RobustEval`), run by the arena
    # on the clean test split after training: plugin code never receives test data and cannot set
    # ``robust_acc`` itself. (This replaces ``extra_eval(model, test_x, test_y, gen)``, no longer called.)
    robust_eval: RobustEval | None = None


class Exploiter(_Plugin):
    """Defeats protection at the data level (``purify``), the training level (``training_mod``) or both.

    Contract: ``purify(protected, raw, ctx)`` receives the protected train split (images + labels) and,
    when ``uses_raw_pool`` is True, the unlabeled raw pool (labels are -1); it returns an
    :class:`ImageSet` or uint8 tensor of the same shape and labels, or ``None`` for "no data change".
    It never receives clean train or test images.
    """

    kind: ClassVar[str] = "exploiter"
    uses_raw_pool: ClassVar[bool] = False
    composable: ClassVar[bool] = True  # may be combined with other exploiters in one cell

    def purify(self, protected: ImageSet, raw: ImageSet | None, ctx: Context) -> ImageSet | torch.Tensor | None:
        return None

    def training_mod(self, ctx: Context) -> TrainingMod | None:
        return None

    @property
    def has_purify(self) -> bool:
        return type(self).purify is not Exploiter.purify

    @property
    def has_training_mod(self) -> bool:
        return type(self).training_mod is not Exploiter.training_mod


class TransformExploiter(Exploiter):
    """A data-level exploiter that maps the protected images through one fixed function, once (ISS squeezes,
    low-pass filters). Subclasses implement ``transform``; the images arrive on ``ctx.device``."""

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W in, uint8 of the same shape out."""
        raise NotImplementedError

    def purify(self, protected: ImageSet, raw: ImageSet | None, ctx: Context) -> ImageSet:
        dev = getattr(ctx, "device", torch.device("cpu"))
        out = self.transform(protected.images.to(dev)).cpu()
        return protected.with_images(out, origin=f"purified:{self.name}")


@dataclass
class Architecture:
    """A registered model family: ``build(num_classes, in_channels, image_size) -> nn.Module``."""

    name: str
    build: Any
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
