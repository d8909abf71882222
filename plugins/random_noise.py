"""Sample-wise random noise: every image its own delta ~ U(-eps, eps) per value, eps = 8/255.

The baseline of the EMN paper (Huang et al., ICLR 2021, Table 1 "random noise": sample-wise, 8/255): it shows
that a perturbation of the same size but with no shortcut in it does nothing to the victim (CIFAR-10
ResNet-18: clean accuracy stays at about 94 %). It is not expected to protect; it is the row that tells a
reader how much of a protector's effect is the size of its noise rather than what the noise encodes. Unlike
``classwise-noise`` the pattern carries no label information at all (the arena's noise separability for it
is near chance).

What it does to a victim on digits (measured on a 2-core AMD EPYC: digits 16 px, cnn-small victim, 15 epochs,
batch 128, crop pad 2 + flip, float32, seeds 0; a throwaway script that protects the train split with
``get_registry().protector("random-noise")`` and trains ``build_model("cnn-small")`` with ``train_victim``
on the clean and on the protected split, run as ``PYTHONPATH=. python /tmp/lsp_try.py random-noise``):
clean 94.6 %, random-noise 95.2 %. No protection, as in the paper.

The stored image is rounded and the change clipped to floor(eps * 255) grey levels (``arena.quantize``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from arena import Budget, ImageSet, Param, ParamSpec, Protector, hookimpl, quantize


class RandomNoise(Protector):
    name = "random-noise"
    summary = "sample-wise uniform noise U(-eps, eps), no shortcut (EMN paper baseline)"
    version = "1"
    params = ParamSpec((Param("eps", float, 8 / 255, "L-inf radius in [0,1] units", low=0.0, high=1.0),))
    check_params: ClassVar[dict[str, Any]] = {}

    def budget(self, train: ImageSet) -> Budget:
        return Budget("linf", self.p["eps"])

    def protect(self, train: ImageSet, ctx: Any) -> ImageSet:
        eps = self.p["eps"]
        gen = ctx.generator(7919, device="cpu")
        delta = (torch.rand(train.images.shape, generator=gen) * 2 - 1) * eps
        out = quantize(train.images, delta, eps)
        self.last_info = {"eps": eps}
        return train.with_images(out, origin=f"protected:{self.name}")


@hookimpl
def arena_register_protectors(register) -> None:
    register(RandomNoise)
