"""Random class-wise noise: one uniform delta_k ~ U(-eps, eps) per class, added to every image of class k.

A shortcut the victim learns late in training; early stopping defeats it. Kept as a baseline because
it shows what "learnable shortcut" alone does without any optimization.

Where the paper's effect does and does not show (measured on one AMD EPYC, digits 16 px, cnn-small victim,
crop pad 2 + flip, exploiter none, seeds 0-4; clean victim 94.1 %, sd 1.2):
- 8/255, 12 epochs (the quick grid before issue 19): 94.1 %, sd 1.0: no effect at all;
- 16/255, 12 epochs: 89.1 %, sd 5.2 (80-93);
- 16/255, 30 epochs: 78.9 %, sd 12.5 (64-95), while the best epoch stays at 80-96 %: the late takeover the
  EMN paper shows on CIFAR-10 (Fig. 1) appears on some seeds only.
Digits are learned from content in one or two epochs, so an unoptimized per-pixel pattern has to displace
a feature the victim already has; on CIFAR-10 content is learned far more slowly and the noise wins the
race. Random crops also shift the pattern, and i.i.d. per-pixel noise shifted by one pixel is uncorrelated
with itself. The arena does not ship a setting where this baseline reliably protects; the quick grid
keeps it (at 16/255) as the "noise alone does little" row.

On the shared CIFAR-10 copy it does not protect either at the CPU grid's scale (issue 19; 2-core AMD EPYC
without AVX-512, 2,000 train images, cnn-small, 30 epochs at lr 0.05, crop pad 4 + flip, seeds 0-2,
`python benchmarks/stability.py tournaments/cifar10-cpu.yaml --seeds 3 --protectors none,classwise-noise,...`):
8/255 gives 52.4 % (sd 1.2) against 52.6 % (sd 0.3) unprotected. The EMN paper's late takeover (Fig. 1,
after ~15 epochs) is a ResNet-18 on 50,000 images; a 3-conv network that reaches 53 % is still learning
content when training ends.

Seed spread at the quick tournament's scale (issue 19; digits 16 px, cnn-small victim 10 epochs, exploiter
none, 2-core AMD EPYC without AVX-512, fp32; BENCHMARKS.md, "whose spread it is": ``benchmarks/stability.py``
5 seeds, ``benchmarks/victim_spread.py`` 4 victims on each of 3 protected sets; unprotected 93.0 %, sd 1.1):
five seeds at 16/255 give 59-91 % (sd 12.1); victims on one protected set spread by 7.2 points, the protected
sets' means by 3.9: the late takeover happens on some victims and not others.
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
