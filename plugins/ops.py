"""One-pixel shortcut (OPS; Wu et al., "One-Pixel Shortcut: on the Learning Preference of Deep Neural Networks",
ICLR 2023).

Every image of class k gets the same single pixel set to class k's colour. Position and colour are chosen
per class, with no model, so that the pixel deviates from what the class's own images have there as much
and as consistently as possible. Following the reference code (github.com/cychomatica/One-Pixel-Shotcut,
``perturb.py``; APBench's ``attack/ops_poisons.py`` is the same search)::

    for class k = 0, 1, ...:                 x: the class's images in [0,1]
        for every position p and every colour v in {0, 1}^C (the 8 corners of the RGB cube):
            a = |v - x[:, :, p]| over the class's images and channels
            score(p, v) = mean(a) / std(a)    (large: far from the class's pixels, and about equally far
                                              for all of them)
        (p, v) pairs an earlier class took score 0
        set pixel p of every image of class k to v

Because it changes one pixel, the budget is an L0 count (``Budget("pixels", 1)``): the value of that pixel
is unbounded. Adversarial training at the usual L-inf radii does not remove it (APBench, CIFAR-10: 15.0 %
after AT), which is why the arena carries it.

Differences from the reference, on purpose:
- a position where every image of the class has the same value (std 0: black borders of digits, MNIST) makes
  the reference's score x/0 = inf (or 0/0 = NaN, which numpy's argsort ranks above everything, so the
  reference can pick a "change" to the value the pixel already has). Here std 0 with mean > 0 ranks above
  every finite score and among those the larger mean wins; 0/0 scores 0;
- other ties go to the first position in row-major order (the reference leaves them to numpy's unstable
  sort);
- with ``pixels`` > 1 the reference takes the top pairs even when two share a position (then the image
  has fewer changed pixels than asked); here the pairs have distinct positions;
- any number of classes and channels (the reference hard-codes 10 classes and RGB).
The search is deterministic: the seed does not enter.

Small images (digits 16 px, cnn-small victim, crop pad 2 + flip, measured on a 2-core AMD EPYC; clean 94.6 %):
one pixel does not protect (95.2 %; 81.7 % with ``margin=3``); 4 pixels 67 %, 16 pixels 29.3 %, and 16 pixels
still 29.0 % under Madry AT (8/255, 2 steps of 4/255) where the clean victim keeps 94.6 %. Every class's pixel
lands on the digits' constant black border, where crops push it out of frame and flips swap the left and right
positions of different classes, while the digit itself is learned in an epoch or two. The tests use
``pixels=16``; CIFAR-size runs keep the paper's 1.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from arena import Budget, ImageSet, Param, ParamError, ParamSpec, Protector, hookimpl


class OPS(Protector):
    name = "ops"
    summary = "one pixel per image, class-wise position and colour by search (Wu et al., ICLR 2023)"
    version = "1"
    params = ParamSpec((
        Param("pixels", int, 1, "pixel positions changed per image (the paper's sparsity)", low=1, high=1024),
        Param("margin", int, 0, "rows/columns along the border left out of the search (0: the paper)",
              low=0, high=1024),
    ))
    check_params: ClassVar[dict[str, Any]] = {}

    def budget(self, train: ImageSet) -> Budget:
        return Budget("pixels", self.p["pixels"])

    def protect(self, train: ImageSet, ctx: Any) -> ImageSet:
        c, h, w = train.shape
        colours = corner_colours(c)  # V x C
        taken = torch.zeros((h * w, len(colours)), dtype=torch.bool)
        mg = self.p["margin"]
        if 2 * mg >= min(h, w):
            raise ParamError(f"protector 'ops': param 'margin' = {mg} leaves no pixel of a {h}x{w} image to search")
        inner = torch.zeros((h, w), dtype=torch.bool)
        inner[mg : h - mg, mg : w - mg] = True
        inner = inner.flatten()
        out = train.images.clone()
        chosen: dict[str, Any] = {}
        for k in range(train.num_classes):
            idx = torch.nonzero(train.labels == k).flatten()
            if len(idx) == 0:
                continue
            score = class_scores(train.images[idx].float() / 255.0, colours)  # (H*W) x V
            score[taken] = -1.0
            score[~inner] = -1.0
            picks = top_distinct_positions(score, self.p["pixels"])
            for pos, v in picks:
                taken[pos, v] = True
                r, col = divmod(pos, w)
                out[idx, :, r, col] = (colours[v] * 255).to(torch.uint8)[None, :]
            chosen[train.classes[k]] = [{"row": divmod(pos, w)[0], "col": divmod(pos, w)[1],
                                         "colour": [int(x) for x in colours[v] * 255]} for pos, v in picks]
        self.last_info = {"pixels": self.p["pixels"], "chosen": chosen}
        return train.with_images(out, origin=f"protected:{self.name}")


def corner_colours(channels: int) -> torch.Tensor:
    """The 2^C colours whose every channel is 0 or 1 (black, white and the six saturated RGB corners)."""
    codes = torch.arange(2 ** channels)
    bits = [(codes >> (channels - 1 - i)) & 1 for i in range(channels)]
    return torch.stack(bits, dim=1).float()


def class_scores(x: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """mean / std of |v - x| over the class's images and channels, per position and colour ((H*W) x V).

    A zero std with a positive mean (the pixel is the same in every image) outranks every finite score, the
    larger mean first; zero mean and zero std (the pixel already is v everywhere) scores 0."""
    n, c, h, w = x.shape
    flat = x.permute(2, 3, 0, 1).reshape(h * w, n * c)  # position x (image, channel) values
    out = torch.empty((h * w, len(colours)))
    for j, v in enumerate(colours):
        a = (v.repeat(n)[None, :] - flat).abs()
        mean, std = a.mean(dim=1), a.std(dim=1, unbiased=False)
        constant = std <= 1e-9
        out[:, j] = torch.where(constant, torch.where(mean > 0, 1e9 * (1 + mean), 0.0), mean / std.clamp_min(1e-9))
    return out


def top_distinct_positions(score: torch.Tensor, count: int) -> list[tuple[int, int]]:
    """The ``count`` best (position, colour) pairs with distinct positions; on equal scores the first
    position in row-major order (and the first colour) wins."""
    best_v = score.argmax(dim=1)
    best = score.gather(1, best_v[:, None]).squeeze(1)
    order = torch.sort(best, descending=True, stable=True).indices[:count]
    return [(int(p), int(best_v[p])) for p in order]


@hookimpl
def arena_register_protectors(register) -> None:
    register(OPS)
