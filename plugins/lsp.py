"""Linear separable synthetic perturbations (LSP; Yu et al., "Availability Attacks Create Shortcuts", KDD 2022).

The paper's point is that effective availability poisons are (nearly) linearly separable, so a noise built
to be separable, with no model at all, should poison as well. Following the reference code
(github.com/dayu11/Availability-Attacks-Create-Shortcuts, ``synthetic_perturbations/cifar_train.py``, and
APBench's ``attack/lsp_poisons.py``, which copies it), per image of class k::

    z   ~ N(0, I_d) A_k + mu_k          d = 3 x (image side / patch)^2 features (48 on CIFAR-10)
                                         mu_k a distinct vertex of {-10, +10}^d, A_k ~ U(-1, 1)^(d x d):
                                         sklearn's make_classification(class_sep=10, n_clusters_per_class=1,
                                         n_informative=d), one Gaussian cluster per class
    delta = z, each feature repeated over a patch x patch block (8 x 8 on 32 px), cropped to the image
    delta <- delta * r / ||delta||_2   r = 6/255 * sqrt(3 * 32 * 32) = 1.304 in [0,1] units on CIFAR-10

So the noise is sample-wise, drawn around one well-separated centre per class, constant on patches: a
colour mosaic per class that a linear model separates at once.

Defaults and units: the reference's radius is ``comput_l2norm_lim(6/255, 3072)`` applied to [0,1] images,
i.e. L2 1.304 in [0,1] units at 32 x 32 x 3 (a per-pixel RMS of 6/255). The default ``l2=None`` keeps that
RMS on other image sizes: r = 6/255 * sqrt(C*H*W) (0.65 on 3 x 16 x 16); ``l2`` sets an absolute radius.
The patch is 8 px on 32 px images (a 4 x 4 grid) and 32 px on APBench's 224 px ImageNet subset; the
default ``patch=None`` takes a quarter of the side up to 64 px (4 px on 16 px images, the same 4 x 4 grid)
and 32 px above.

Differences from the reference, on purpose:
- the stored image is rounded, not floored (``astype(np.uint8)`` in the reference), and an image whose
  rounded change would leave the L2 ball is shrunk onto it (``plugins/l2_common.quantize_l2``): the arena
  checks the declared radius on the uint8 images, the reference never checked it;
- the reference draws exactly N synthetic points and hands class k the first ``n_k`` points that happen to
  carry label k (an unlucky draw leaves a class short, and SVHN needs its ``n *= 2``); here every image gets
  its own draw from its class's cluster, so no class runs out;
- the centres and mixing matrices come from the cell seed (a torch generator), not numpy's global state.

Small images (digits 16 px, cnn-small victim, 15 epochs, crop pad 2 + flip, a 2-core AMD EPYC; clean 94.6 %):
the default 4 px patches (4 x 4 grid) at radius 0.65 leave the victim at 76.9 % (71.5 % at radius 1.0, 41.1 % at
1.3); 8 px patches (2 x 2 grid, 12 features) at the default radius give 32.4 %. With 48 features the
make_classification cluster spread (sd sqrt(d/3) = 4 per feature against centres at +-10) is twice that of 12
features, and digits, learned from content in an epoch or two, win against the noisier shortcut. The tests use
``patch=8``; CIFAR-size runs keep 8 px on 32 px.

Seed spread at the quick tournament's scale (issue 19; digits 16 px, cnn-small victim 10 epochs, exploiter
none, 2-core AMD EPYC without AVX-512, fp32; BENCHMARKS.md, "whose spread it is": ``benchmarks/stability.py``
5 seeds, ``benchmarks/victim_spread.py`` 4 victims on each of 3 protected sets; unprotected 93.0 %, sd 1.1):
five seeds give 38-65 % (sd 9.8); victims on one protected set spread by 8.1 points, the protected sets' means
by 4.8: mostly the victim's race between the clusters and the digit content.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from arena import ArenaError, Budget, ImageSet, Param, ParamSpec, Protector, hookimpl

from .l2_common import REF_DIM, quantize_l2, scaled_radius, unit_l2

RMS = 6 / 255  # the reference's per-pixel level: radius = RMS * sqrt(C*H*W)


class LSP(Protector):
    name = "lsp"
    summary = "linear separable synthetic patch noise, one Gaussian cluster per class (Yu et al., KDD 2022)"
    version = "1"
    params = ParamSpec((
        Param("l2", float, None, "L2 radius in [0,1] units; None: 6/255 * sqrt(C*H*W), 1.304 at 3x32x32",
              low=0.0, high=1000.0, optional=True),
        Param("patch", int, None, "side of the constant noise blocks in px; None: side/4 up to 64 px, else 32",
              low=1, high=4096, optional=True),
        Param("class_sep", float, 10.0, "distance of the class centres from the origin, per feature",
              low=0.0, high=1000.0),
    ))
    check_params: ClassVar[dict[str, Any]] = {}

    def radius(self, shape: tuple[int, int, int]) -> float:
        return self.p["l2"] if self.p["l2"] is not None else scaled_radius(RMS * math.sqrt(REF_DIM), shape)

    def patch(self, shape: tuple[int, int, int]) -> int:
        if self.p["patch"] is not None:
            return self.p["patch"]
        side = max(shape[1], shape[2])
        return max(1, side // 4) if side <= 64 else 32

    def budget(self, train: ImageSet) -> Budget:
        return Budget("l2", self.radius(train.shape))

    def protect(self, train: ImageSet, ctx: Any) -> ImageSet:
        c, h, w = train.shape
        k = train.num_classes
        p = self.patch(train.shape)
        gh, gw = -(-h // p), -(-w // p)
        d = c * gh * gw
        gen = ctx.generator(4217, device="cpu")
        centres = distinct_vertices(k, d, gen) * self.p["class_sep"]
        mixing = torch.rand((k, d, d), generator=gen) * 2 - 1
        z = torch.randn((len(train), d), generator=gen)
        labels = train.labels
        z = torch.bmm(z.unsqueeze(1), mixing[labels]).squeeze(1) + centres[labels]
        grid = z.view(-1, c, gh, gw)
        delta = F.interpolate(grid, scale_factor=p, mode="nearest")[:, :, :h, :w]
        r = self.radius(train.shape)
        out = quantize_l2(train.images, unit_l2(delta) * r, r)
        self.last_info = {"l2": r, "patch": p, "grid": [gh, gw], "features": d, "class_sep": self.p["class_sep"],
                          "min_centre_distance": _min_distance(centres)}
        return train.with_images(out, origin=f"protected:{self.name}")


def distinct_vertices(k: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """k distinct random vertices of {-1, +1}^d (make_classification's cluster centres), as float."""
    if k > 2 ** min(d, 62):
        raise ArenaError(f"protector 'lsp': {k} classes need more than the {2 ** d} sign patterns of {d} noise "
                         f"features; use a smaller param 'patch'")
    chosen: list[torch.Tensor] = []
    while len(chosen) < k:
        v = torch.randint(0, 2, (d,), generator=gen).float() * 2 - 1
        if not any(torch.equal(v, u) for u in chosen):
            chosen.append(v)
    return torch.stack(chosen)


def _min_distance(centres: torch.Tensor) -> float:
    dist = torch.cdist(centres, centres)
    dist.fill_diagonal_(float("inf"))
    return float(dist.min()) if len(centres) > 1 else 0.0


@hookimpl
def arena_register_protectors(register) -> None:
    register(LSP)
