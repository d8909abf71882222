"""Image shortcut squeezing (ISS; Liu, Zhao & Larson, ICML 2023): simple compressions of the training
images that erase the shortcut an unlearnable perturbation plants.

Algorithm (data level, on the protected train split only; the test split stays clean):

- ``iss-grayscale``: ``L = 0.299 R + 0.587 G + 0.114 B``, copied to the three channels. Kills
  colour-structured noise (most of EMN's and REM's perturbation energy is in the chroma channels).
- ``iss-jpeg``: JPEG encode + decode at ``quality`` (default 10). Kills high-frequency noise.
- ``iss-bdr``: bit-depth reduction to ``bits`` bits per channel (default 2). Kills low-amplitude noise.
  ``mode="posterize"`` (default since issue 15) is what ISS's code runs, torchvision's
  ``RandomPosterize(bits=2, p=1)``: keep the top ``bits`` bits, ``x & ~(2^(8-b) - 1)``, so levels
  0/64/128/192 at 2 bits and every pixel moves down (up to 63 grey levels). ``mode="round"`` is the
  earlier behaviour, Xu et al.'s feature squeezing, ``round(x * (2^b - 1)) / (2^b - 1)``: evenly spaced
  levels 0/85/170/255 that keep the image's brightness.

All three are applied **once** to the stored protected train images, not every epoch: each is a
deterministic function of the image, so a per-epoch squeeze placed before the victim's crop+flip would
produce the same pixels in every epoch; doing it once gives exactly that training data, at no cost
per step. (The crop+flip of the base recipe then runs on the squeezed images, as in a data pipeline
that squeezes first.)

Differences from the reference code (ISS applies torchvision/PIL transforms per PIL image in the
DataLoader): everything but the JPEG codec is batched tensor ops. Grayscale uses PIL's exact integer rule for
``convert("L")`` (``(19595 R + 38470 G + 7471 B + 2^15) >> 16``) so results match the reference pixel
for pixel; torchvision's tensor ``rgb_to_grayscale`` truncates instead of rounding and would darken
every image by up to one grey level. JPEG is PIL's ``save(..., "JPEG", quality=q)`` (libjpeg, default 4:2:0
chroma subsampling) then ``open``, per image, as in the reference, always on the CPU: nvjpeg output differs
from libjpeg by a few grey levels and between GPU generations, and 50,000 32 px images take seconds on the
CPU anyway. (Earlier versions used ``torchvision.io.encode_jpeg``, which torchvision 0.29 deprecates; its
output was checked bit-identical to PIL's at qualities 10, 75 and 90 on RGB and grey images, so results
did not change.)
Single-channel images: grayscale leaves them unchanged; JPEG and BDR work per channel as usual.

Composability: each composes with any other exploiter. Sensible cells: one ISS squeeze +
``adversarial-training`` (ISS's paper combines them against REM), + ``early-stopping``, or two squeezes
in a row (``iss-grayscale`` then ``iss-jpeg``, ISS's "combined" variant for mixed perturbations).
The same squeeze twice in one combination is refused by the arena (one-line error): change its param.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from arena import ArenaError, Param, ParamSpec, TransformExploiter, hookimpl


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> luminance copied to 3 channels, PIL's ``convert("L")`` arithmetic."""
    if images.shape[1] != 3:
        return images.clone()
    x = images.to(torch.int64)
    lum = (x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 0x8000) >> 16
    return lum.clamp_(0, 255).to(torch.uint8)[:, None].expand(-1, 3, -1, -1).contiguous()


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of a uint8 batch through PIL's libjpeg, one image at a time (as ISS's DataLoader)."""
    if images.shape[1] not in (1, 3):
        raise ArenaError(f"iss-jpeg: JPEG holds 1 or 3 channels; got images with {images.shape[1]}")
    hwc = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    out = np.empty_like(hwc)
    buf = io.BytesIO()
    for i, img in enumerate(hwc):
        buf.seek(0)
        buf.truncate()
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as dec:
            out[i] = np.asarray(dec).reshape(img.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


def posterize(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the top ``bits`` bits of every uint8 value (PIL's and torchvision's posterize, as ISS runs it)."""
    mask = (0xFF << (8 - bits)) & 0xFF
    return images.bitwise_and(mask)


def bit_depth_reduce(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Round to 2^bits evenly spaced levels in [0, 255] (feature squeezing; ``iss-bdr mode=round``)."""
    levels = (1 << bits) - 1
    x = images.float().div(255.0)
    return (x.mul(levels).round_().div_(levels).mul_(255.0)).round_().clamp_(0, 255).to(torch.uint8)



class ISSGrayscale(TransformExploiter):
    name = "iss-grayscale"
    summary = "ISS: grayscale the protected train images (once)"
    params = ParamSpec()

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return grayscale(images)


class ISSJpeg(TransformExploiter):
    name = "iss-jpeg"
    summary = "ISS: JPEG-compress the protected train images (once)"
    params = ParamSpec((Param("quality", int, 10, "JPEG quality (ISS: 10)", low=1, high=100),))

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return jpeg(images, self.p["quality"])


class ISSBitDepth(TransformExploiter):
    name = "iss-bdr"
    summary = "ISS: bit-depth reduction of the protected train images (once)"
    params = ParamSpec((
        Param("bits", int, 2, "bits kept per channel (ISS: 2)", low=1, high=8),
        Param("mode", str, "posterize", "posterize: keep the top bits (ISS's code); round: nearest of 2^bits "
              "evenly spaced levels (feature squeezing, this plugin before issue 15)", choices=("posterize", "round")),
    ))

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        if self.p["mode"] == "round":
            return bit_depth_reduce(images, self.p["bits"])
        return posterize(images, self.p["bits"])


@hookimpl
def arena_register_exploiters(register) -> None:
    register(ISSGrayscale)
    register(ISSJpeg)
    register(ISSBitDepth)
