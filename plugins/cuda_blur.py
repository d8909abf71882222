"""Convolution-based unlearnable data (CUDA; Sadasivan et al., "CUDA: Convolution-based Unlearnable Datasets",
CVPR 2023). Registered as ``cuda``; the module is ``cuda_blur`` so that it is not mistaken for the GPU API.

Every image of class k is blurred by class k's random 3 x 3 filter. The filters differ by class, so the
blur itself is the label's shortcut, and the victim learns the filter instead of the content. Following the
reference code (github.com/vinusankars/Convolution-based-Unlearnability, ``final_filter_unlearnable.py``)::

    filter of class k: w ~ U(0, blur)^(3x3), blur = 0.3; one entry at a random position set to 1.0
                       (the "center parameter"); the same filter for every channel (depth-wise, no mixing
                       of channels), zero padding 1, no bias
    image x in [0,1]:  y = conv(x, w_k) / max(conv(x, w_k))    (max over the whole image, all channels)

The output is NOT norm-bounded: a blur moves pixels by as much as the image's own edges, and the division by
the maximum rescales the whole image. The budget is declared ``Budget("none", 0.0)`` and ``last_info``
repeats ``"norm_bounded": False`` so no row reads as an L-inf or L2 result; the arena still measures and
stores the L-inf, L2 and PSNR/SSIM of what it did.

Differences from the reference, on purpose:
- the stored image is rounded; the reference truncates (``astype(np.uint8)``), which darkens every
  pixel by half a grey level on average;
- an all-black image (maximum 0, a division by zero in the reference: NaN, stored as black) is kept as it is;
- filters come from the cell seed, not numpy's global seed; the reference's ``mix`` (poison only a share of
  the images) is the arena's ``poison_ratios`` and is not a param here.

Small images (digits 16 px, cnn-small victim, crop pad 2 + flip, a 2-core AMD EPYC; clean 94.6 %): digits are
8 x 8 images upsampled twice, so the paper's 3 x 3 filter spans 1.5 source pixels and hardly blurs them: 74.6 %
after 15 epochs (70.1 % with ``blur=1.0``). ``kernel=5`` blurs at the source scale: 24.8 % after 10 epochs. The
tests use ``kernel=5``; CIFAR-size runs keep 3.

Seed spread at the quick tournament's scale (issue 19; digits 16 px, cnn-small victim 10 epochs, exploiter
none, 2-core AMD EPYC without AVX-512, fp32; BENCHMARKS.md, "whose spread it is": ``benchmarks/stability.py``
5 seeds, ``benchmarks/victim_spread.py`` 4 victims on each of 3 protected sets; unprotected 93.0 %, sd 1.1):
five seeds give 20-37 % (sd 6.5); victims on one protected set spread by 5.4 points, the protected sets' means
by 3.6: mostly the victim's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from arena import Budget, ImageSet, Param, ParamSpec, Protector, hookimpl


class CUDA(Protector):
    name = "cuda"
    summary = "class-wise random 3x3 blur (Sadasivan et al., CVPR 2023); not norm-bounded"
    version = "1"
    params = ParamSpec((
        Param("blur", float, 0.3, "upper end of the U(0, blur) filter weights", low=0.0, high=100.0),
        Param("center", float, 1.0, "the weight of the one large entry at a random position", low=0.0, high=100.0),
        Param("kernel", int, 3, "filter side", choices=(1, 3, 5, 7, 9)),
        Param("batch_size", int, 4096, "images filtered at once", low=1, high=1_000_000),
    ))
    check_params: ClassVar[dict[str, Any]] = {}

    def budget(self, train: ImageSet) -> Budget:
        return Budget("none", 0.0)

    def protect(self, train: ImageSet, ctx: Any) -> ImageSet:
        c = train.shape[0]
        filters = class_filters(train.num_classes, self.p["kernel"], self.p["blur"], self.p["center"],
                                ctx.generator(6007, device="cpu"))
        out = torch.empty_like(train.images)
        dev = ctx.device
        for i in range(0, len(train), self.p["batch_size"]):
            sl = slice(i, min(i + self.p["batch_size"], len(train)))
            x = train.images[sl].to(dev).float().div_(255.0)
            w = filters[train.labels[sl]].to(dev)  # n x k x k, one filter per image
            out[sl] = blur_images(x, w, c).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu()
        self.last_info = {"norm_bounded": False, "blur": self.p["blur"], "center": self.p["center"],
                          "filters": [[round(float(v), 4) for v in f.flatten()] for f in filters]}
        return train.with_images(out, origin=f"protected:{self.name}")


def class_filters(k: int, size: int, blur: float, center: float, gen: torch.Generator) -> torch.Tensor:
    """k x size x size filters: U(0, blur) weights with one ``center`` entry at a random position."""
    w = torch.rand((k, size, size), generator=gen) * blur
    pos = torch.randint(0, size * size, (k,), generator=gen)
    w.view(k, -1)[torch.arange(k), pos] = center
    return w


def blur_images(x: torch.Tensor, filters: torch.Tensor, channels: int) -> torch.Tensor:
    """Each image (n x C x H x W floats) convolved per channel with its own filter (n x k x k), zero-padded,
    then divided by its own maximum (left as it is where that maximum is not positive)."""
    n, _, h, w = x.shape
    k = filters.shape[-1]
    weight = filters.repeat_interleave(channels, dim=0).unsqueeze(1)  # (n*C) x 1 x k x k
    y = F.conv2d(x.reshape(1, n * channels, h, w), weight, padding=k // 2, groups=n * channels)
    y = y.reshape(n, channels, h, w)
    top = y.flatten(1).amax(dim=1).view(n, 1, 1, 1)
    return torch.where(top > 0, y / top.clamp_min(1e-12), x)


@hookimpl
def arena_register_protectors(register) -> None:
    register(CUDA)
