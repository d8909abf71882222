"""Low-pass filters as data-level exploiters: ``filter-mean``, ``filter-median``, ``filter-gaussian``.

Algorithm: smooth every protected training image once with a ``size`` x ``size`` (default 3x3) kernel,
channel by channel; the test split stays clean. Error-minimizing noise is largely high-frequency, so a
blur removes part of it, at the price of blurring the image the victim learns from: the baselines
ISS and ConfounderGAN compare against (METHODS.md "augmentations").

- mean: box filter, every weight ``1 / size^2``;
- median: the per-channel median of the ``size x size`` neighbourhood (``unfold`` + ``median``);
- gaussian: weights ``exp(-(i^2 + j^2) / (2 sigma^2))`` normalized to sum 1; the default sigma 0.8 is
  OpenCV's choice for a 3x3 kernel (``0.3 * ((ksize - 1) * 0.5 - 1) + 0.8``).

Applied once to the stored images: the filters are deterministic, so filtering in every epoch would
train on the same pixels. Borders use reflect padding (OpenCV's default ``BORDER_REFLECT_101``), so
the outermost pixels are not darkened by zeros as a zero-padded convolution would. Results are rounded
back to uint8. Everything is one batched ``conv2d`` (depthwise) or one ``unfold`` on the device, in
chunks to bound memory.

Composability: each composes with any other exploiter; sensible cells are a filter + a training-level
exploiter (``adversarial-training``, an augmentation, ``early-stopping``). Stacking two filters or a
filter and an ISS squeeze runs but compounds the blur; the same filter twice in one combination is
refused by the arena (one-line error): raise ``size`` instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arena import Param, ParamSpec, TransformExploiter, hookimpl

SIZE = Param("size", int, 3, "kernel side in pixels (odd)", choices=(3, 5, 7, 9))
CHUNK = 4096


def _pad(x: torch.Tensor, r: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    mode = "reflect" if min(h, w) > r else "replicate"  # reflect needs more pixels than the radius
    return F.pad(x, (r, r, r, r), mode=mode)


def _chunks(images: torch.Tensor, fn) -> torch.Tensor:
    out = torch.empty_like(images)
    for i in range(0, images.shape[0], CHUNK):
        x = images[i : i + CHUNK].float()
        out[i : i + CHUNK] = fn(x).round_().clamp_(0, 255).to(torch.uint8)
    return out


def convolve(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D convolution of uint8 images with a k x k kernel (same kernel on every channel)."""
    c = images.shape[1]
    k = kernel.shape[-1]
    weight = kernel.to(images.device, torch.float32).expand(c, 1, k, k).contiguous()
    return _chunks(images, lambda x: F.conv2d(_pad(x, k // 2), weight, groups=c))


def median_filter(images: torch.Tensor, size: int) -> torch.Tensor:
    """Per-channel k x k median (the lower middle value is not needed: k^2 is odd)."""
    n_, c, h, w = images.shape

    def med(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        cols = F.unfold(_pad(x, size // 2), size)  # n x (c*k*k) x (h*w)
        return cols.view(n, c, size * size, h * w).median(dim=2).values.view(n, c, h, w)

    return _chunks(images, med)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()



class MeanFilter(TransformExploiter):
    name = "filter-mean"
    summary = "box (mean) filter on the protected train images, once"
    params = ParamSpec((SIZE,))

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        k = self.p["size"]
        return convolve(images, torch.full((k, k), 1.0 / (k * k)))


class MedianFilter(TransformExploiter):
    name = "filter-median"
    summary = "median filter on the protected train images, once"
    params = ParamSpec((SIZE,))

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return median_filter(images, self.p["size"])


class GaussianFilter(TransformExploiter):
    name = "filter-gaussian"
    summary = "Gaussian blur on the protected train images, once"
    params = ParamSpec((SIZE, Param("sigma", float, 0.8, "standard deviation in pixels (OpenCV's 3x3 default)",
                                    low=0.05, high=100.0)))

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return convolve(images, gaussian_kernel(self.p["size"], self.p["sigma"]))


@hookimpl
def arena_register_exploiters(register) -> None:
    register(MeanFilter)
    register(MedianFilter)
    register(GaussianFilter)
