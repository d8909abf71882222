"""Class-wise patch (the confounder baseline of ConfounderGAN, sec. 4.2).

Every image of class k gets the same solid patch P_k (a random colour per class) in a fixed corner. The
paper uses 36x36 on 224 px images, a side ratio of 0.16. The budget is a patch area, not an L-inf radius:
inside the patch the change is unbounded.

The colours are random but kept apart: from 64 uniform candidates per class (seeded), a greedy farthest-
point pick takes each next colour as far as possible from those already chosen. With plain independent
uniform colours two classes sometimes got nearly the same patch, and then the victim has to learn those
classes from content: on the quick tournament (digits 16 px, ratio 0.25, cnn-small, 12 epochs) the five
seeds' closest pair of colours was 21-57 grey levels apart and the victim's accuracy followed it (27-46 %,
sd 7.6; closest pairs under 40 levels gave the three worst results). The paper asks only that patches
differ by class, which separated colours do more reliably.

Seed spread at the quick tournament's scale (issue 19; digits 16 px, cnn-small victim 10 epochs, exploiter
none, 2-core AMD EPYC without AVX-512, fp32; BENCHMARKS.md, "whose spread it is": ``benchmarks/stability.py``
5 seeds, ``benchmarks/victim_spread.py`` 4 victims on each of 3 protected sets; unprotected 93.0 %, sd 1.1):
five seeds give 21-38 % (sd 6.8). Victims on one protected set agree within 3.0 points; the colour sets of
protect seeds 0-2 give 43 / 29 / 24 %, and neither their closest pair (134 / 136 / 142 levels) nor their
distance from the black background (74 / 11 / 27) orders them.

What does order them (fourth session, same machine; ``benchmarks/victim_spread.py ... --protectors
classwise-patch --protect-seeds 0,1,2 --victims 4``): the victim learns the patch and little content, and a
clean test image, whose corner is black, goes to the classes whose patch looks most like no patch. Sets 1
and 2 each hold a near-black colour ((1, 2, 11), (21, 15, 9)) and a dull grey one; their victims put 90 % /
89 % of the test images into those two classes and score 29 / 24 %. Set 0's darkest colour is (48, 56, 0);
its victims spread the test images over four classes (57 % in the top two) and score 43 %. The spread is
the baseline's own mechanism, so the colours stay random per class as the paper has them.
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
        colours = separated_colours(train.num_classes, c, torch.Generator().manual_seed(ctx.seed * 7 + 13))
        out = train.images.clone()
        top = 0 if self.p["corner"].startswith("top") else h - ph
        left = 0 if self.p["corner"].endswith("left") else w - pw
        out[:, :, top : top + ph, left : left + pw] = colours[train.labels][:, :, None, None]
        return train.with_images(out, origin=f"protected:{self.name}")


def separated_colours(k: int, channels: int, gen: torch.Generator, candidates: int = 64) -> torch.Tensor:
    """k uint8 colours: greedy farthest-point choice among ``candidates * k`` seeded uniform ones."""
    pool = torch.rand((candidates * k, channels), generator=gen) * 255
    chosen = [0]
    dist = torch.cdist(pool, pool[:1]).squeeze(1)
    for _ in range(1, k):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.cdist(pool, pool[nxt : nxt + 1]).squeeze(1))
    return pool[chosen].round().to(torch.uint8)


@hookimpl
def arena_register_protectors(register) -> None:
    register(ClasswisePatch)
