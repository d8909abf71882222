"""Every registered architecture builds and classifies small and large images."""

from __future__ import annotations

import pytest
import torch

from arena.models import build_model
from arena.registry import get_registry


@pytest.mark.parametrize("arch", ["cnn-small", "cnn-tiny", "resnet18", "resnet50", "vgg11", "vgg16", "densenet121", "wrn-34-10"])
def test_architecture_forward(arch: str) -> None:
    m = build_model(arch, num_classes=7, in_channels=3, image_size=32, seed=0).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert arch in get_registry().names("architectures")


def test_cifar_stem_for_small_images_and_seeded_init() -> None:
    small = build_model("resnet18", 10, 3, 32, seed=1)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    big = build_model("resnet18", 10, 3, 128, seed=1)
    assert big.conv1.kernel_size == (7, 7)
    again = build_model("resnet18", 10, 3, 32, seed=1)
    assert torch.equal(small.conv1.weight, again.conv1.weight)
