"""Random class-wise noise: one uniform delta_k ~ U(-eps, eps) per class, added to every image of class k.

A shortcut the victim learns late in training; early stopping defeats it. Kept as a baseline because
it shows what "learnable shortcut" alone does without any optimization.
"""

from __future__ import annotations

import torch

from arena import Budget, ImageSet, Param, ParamSpec, Protector, hookimpl, quantize


class ClasswiseNoise(Protector):
    name = "classwise-noise"
    summary = "random uniform noise, one pattern per class"
    params = ParamSpec((Param("eps", float, 8 / 255, "L-inf radius in [0,1] units", low=0.0, high=1.0),))

    def budget(self, train: ImageSet) -> Budget:
        return Budget("linf", self.p["eps"])

    def protect(self, train: ImageSet, ctx) -> ImageSet:
        eps = self.p["eps"]
        gen = torch.Generator().manual_seed(ctx.seed * 7 + 11)
        k = train.num_classes
        delta = (torch.rand((k, *train.shape), generator=gen) * 2 - 1) * eps
        out = quantize(train.images, delta[train.labels], eps)
        return train.with_images(out, origin=f"protected:{self.name}")


@hookimpl
def arena_register_protectors(register) -> None:
    register(ClasswiseNoise)
