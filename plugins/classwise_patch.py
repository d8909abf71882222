"""Class-wise patch (the confounder baseline of ConfounderGAN, sec. 4.2).

Every image of class k gets the same solid patch P_k (a random uniform colour per class) in a fixed
corner. The paper uses 36x36 on 224 px images, a side ratio of 0.16. The budget is a patch area, not
an L-inf radius: inside the patch the change is unbounded.
"""

from __future__ import annotations

import math

import torch

from arena import Budget, ImageSet, Param, ParamSpec, Protector, hookimpl

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


class ClasswisePatch(Protector):
    name = "classwise-patch"
    summary = "a solid class-coloured patch in a fixed corner"
    params = ParamSpec((
        Param("ratio", float, 0.16, "patch side as a fraction of the image side", low=0.01, high=1.0),
        Param("corner", str, "bottom-right", choices=CORNERS),
    ))

    def _side(self, train: ImageSet) -> tuple[int, int]:
        _, h, w = train.shape
        return max(1, math.ceil(self.p["ratio"] * h - 1e-9)), max(1, math.ceil(self.p["ratio"] * w - 1e-9))

    def budget(self, train: ImageSet) -> Budget:
        ph, pw = self._side(train)
        _, h, w = train.shape
        return Budget("patch", ph * pw / (h * w))

    def protect(self, train: ImageSet, ctx) -> ImageSet:
        c, h, w = train.shape
        ph, pw = self._side(train)
        gen = torch.Generator().manual_seed(ctx.seed * 7 + 13)
        colours = (torch.rand((train.num_classes, c), generator=gen) * 255).round().to(torch.uint8)
        out = train.images.clone()
        top = 0 if self.p["corner"].startswith("top") else h - ph
        left = 0 if self.p["corner"].endswith("left") else w - pw
        out[:, :, top : top + ph, left : left + pw] = colours[train.labels][:, :, None, None]
        return train.with_images(out, origin=f"protected:{self.name}")


@hookimpl
def arena_register_protectors(register) -> None:
    register(ClasswisePatch)
