"""Image-quality metrics of protected/purified images against their source (PSNR, SSIM), batched."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR in dB over images of uint8 tensors; identical images count as 100 dB."""
    x, y = a.float() / 255.0, b.float() / 255.0
    mse = (x - y).pow(2).reshape(x.shape[0], -1).mean(dim=1)
    val = torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-12)), torch.full_like(mse, 100.0))
    return float(val.mean())


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(g**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, batch: int = 1024) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5, per channel) of uint8 image batches."""
    c, h, w = a.shape[1:]
    size = min(11, h, w)
    g = _gauss(size)
    win = (g[:, None] * g[None, :]).expand(c, 1, size, size).contiguous()
    c1, c2 = 0.01**2, 0.03**2
    total, n = 0.0, 0
    for i in range(0, a.shape[0], batch):
        x = a[i : i + batch].float() / 255.0
        y = b[i : i + batch].float() / 255.0
        mu_x = F.conv2d(x, win, groups=c)
        mu_y = F.conv2d(y, win, groups=c)
        sxx = F.conv2d(x * x, win, groups=c) - mu_x**2
        syy = F.conv2d(y * y, win, groups=c) - mu_y**2
        sxy = F.conv2d(x * y, win, groups=c) - mu_x * mu_y
        s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
        total += float(s.reshape(s.shape[0], -1).mean(dim=1).sum())
        n += x.shape[0]
    return total / max(n, 1)


def image_quality(clean: torch.Tensor, changed: torch.Tensor) -> dict[str, float]:
    return {"psnr": psnr(clean, changed), "ssim": ssim(clean, changed)}
