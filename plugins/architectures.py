"""Victim and surrogate architectures.

For small images (<= 64 px) the ResNet, DenseNet and VGG variants are the CIFAR ones the papers use:
3x3 stride-1 stem, no max-pool, global pooling before one linear layer. Larger images get the
torchvision ImageNet stems. ``cnn-small`` is a fast 3-conv network for CPU tests; ``cnn-tiny``, half as
wide, the quick tournament's victim and surrogate.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models.vgg import cfgs as VGG_CFGS
from torchvision.models.vgg import make_layers

from arena import hookimpl

SMALL = 64  # images up to this side use the CIFAR stems


class CNNSmall(nn.Module):
    """Three conv-BN-ReLU blocks ``width``, 2x, 4x wide with two max-pools. ``cnn-small`` is 32 wide;
    ``cnn-tiny`` (16 wide) trains a 16 px digits victim 2.8x faster on one CPU core (6.6 -> 2.3 s for 10
    epochs, clean 91-94 % against 93-95 %, seeds 0-2, one AMD EPYC without AVX-512), which is what lets the
    quick grid run every protector and exploiter on three seeds in minutes."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        w = width
        self.features = nn.Sequential(block(in_channels, w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2),
                                      block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _resnet(fn, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    m = fn(num_classes=num_classes)
    if image_size <= SMALL:
        m.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    elif in_channels != 3:
        m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return m


class _VGG(nn.Module):
    def __init__(self, cfg: str, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers = make_layers(VGG_CFGS[cfg], batch_norm=True)
        if in_channels != 3:
            layers[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        self.features = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _vgg(cfg: str, fn):
    def build(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        if image_size <= SMALL:
            return _VGG(cfg, num_classes, in_channels)
        m = fn(num_classes=num_classes)
        if in_channels != 3:
            m.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        return m

    return build


def _densenet121(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    m = tvm.densenet121(num_classes=num_classes)
    if image_size <= SMALL:
        m.features.conv0 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        m.features.pool0 = nn.Identity()
    elif in_channels != 3:
        m.features.conv0 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return m


class _WideBlock(nn.Module):
    def __init__(self, i: int, o: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(i), nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(o), nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.short = None if (i == o and stride == 1) else nn.Conv2d(i, o, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.short is None else self.short(o))


class WideResNet(nn.Module):
    """WRN-depth-widen (Zagoruyko & Komodakis), the adversarial-training standard; not in torchvision."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        layers = []
        for g, stride in zip(range(3), (1, 2, 2)):
            for b in range(n):
                layers.append(_WideBlock(w[g] if b == 0 else w[g + 1], w[g + 1], stride if b == 0 else 1))
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(w[3])
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))


def _mobilenetv2(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision's MobileNetV2 (width 1.0, dropout 0.2 head). At <= 64 px the two CIFAR changes of the
    common port (kuangliu/pytorch-cifar, used by APBench): the stem conv and the first 24-channel block
    run at stride 1 instead of 2, so a 32 px input reaches the last stage at 4 x 4, not 1 x 1. Unlike that port
    it keeps torchvision's ReLU6, dropout-0.2 head and residual rule (a residual only where input and output
    shapes match; the port adds a 1x1-conv shortcut where only the channels change)."""
    m = tvm.mobilenet_v2(num_classes=num_classes)
    stride = 1 if image_size <= SMALL else 2
    m.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride, 1, bias=False)
    if image_size <= SMALL:
        m.features[2].conv[1][0].stride = (1, 1)  # the depthwise conv of the stride-2 block of stage 2
    return m


def _vit_small(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """A ViT for small images: patch 4 (64 tokens at 32 px, 16 at 16 px), width 512, depth 6, 8 heads, MLP
    512, dropout 0.1: the size of APBench's CIFAR ``vit_small`` (lucidrains' ViT for small data sets), built
    from torchvision's plain ViT (no shifted-patch tokens or locality self-attention; torchvision's position
    embedding init, std 0.02, where lucidrains' draws std 1). Larger images use patch 16, as ViT-B/16.
    APBench trains it with Adam at its global ``--lr`` (default 0.1, no ViT-specific value), no weight decay,
    200 epochs; ``tournaments/full.yaml``'s SGD 0.01 with grad clip 1.0 is the arena's own choice."""
    patch = 4 if image_size <= SMALL else 16
    if image_size % patch:
        from arena import ArenaError

        raise ArenaError(f"architecture 'vit-small' needs an image side divisible by its patch {patch}; "
                         f"got {image_size} px")
    m = tvm.VisionTransformer(image_size=image_size, patch_size=patch, num_layers=6, num_heads=8, hidden_dim=512,
                              mlp_dim=512, dropout=0.1, num_classes=num_classes)
    if in_channels != 3:
        m.conv_proj = nn.Conv2d(in_channels, 512, patch, patch)
    return m


@hookimpl
def arena_register_architectures(register) -> None:
    register("mobilenetv2", _mobilenetv2, summary="MobileNetV2 (CIFAR strides <= 64px)")
    register("vit-small", _vit_small, summary="ViT, patch 4, 512 wide, 6 deep (for 16-64px images)")
    register("cnn-small", lambda num_classes, in_channels=3, image_size=32: CNNSmall(num_classes, in_channels),
             summary="3-conv CNN (32-64-128, BN), fast on CPU")
    register("cnn-tiny", lambda num_classes, in_channels=3, image_size=32: CNNSmall(num_classes, in_channels, 16),
             summary="3-conv CNN (16-32-64, BN), the quick grid's victim: 2.8x cheaper than cnn-small")
    register("resnet18", lambda num_classes, in_channels=3, image_size=32:
             _resnet(tvm.resnet18, num_classes, in_channels, image_size), summary="ResNet-18 (CIFAR stem <= 64px)")
    register("resnet50", lambda num_classes, in_channels=3, image_size=32:
             _resnet(tvm.resnet50, num_classes, in_channels, image_size), summary="ResNet-50 (CIFAR stem <= 64px)")
    register("vgg11", _vgg("A", tvm.vgg11_bn), summary="VGG-11 with BatchNorm (CIFAR head <= 64px)")
    register("vgg16", _vgg("D", tvm.vgg16_bn), summary="VGG-16 with BatchNorm (CIFAR head <= 64px)")
    register("densenet121", _densenet121, summary="DenseNet-121 (CIFAR stem <= 64px)")
    register("wrn-34-10", lambda num_classes, in_channels=3, image_size=32: WideResNet(34, 10, num_classes, in_channels),
             summary="WideResNet-34-10")
