"""Budget enforcement after uint8 quantization lives in the core and rejects over-budget protectors."""

from __future__ import annotations

import pytest
import torch

from arena import ArenaError, Budget, BudgetViolation, Context, Protector, quantize
from arena.conformance import check_plugin, tiny_data
from arena.metrics import psnr, ssim
from arena.registry import Registry
from arena.stages import ContractError, run_protect


def test_quantize_rounds_and_keeps_negative_noise() -> None:
    clean = torch.full((1, 1, 1, 4), 100, dtype=torch.uint8)
    delta = torch.tensor([-8.4, -0.6, 0.6, 20.0]).reshape(1, 1, 1, 4) / 255
    out = quantize(clean, delta, eps=8 / 255)
    assert out.flatten().tolist() == [92, 99, 101, 108]  # rounded, negative kept, clipped to 8


class OverBudget(Protector):
    name = "over-budget"

    def budget(self, train):
        return Budget("linf", 4 / 255)

    def protect(self, train, ctx):
        return quantize(train.images, torch.full(train.images.shape, 6 / 255))  # claims 4, does 6


class WrongShape(Protector):
    name = "wrong-shape"

    def budget(self, train):
        return Budget("linf", 8 / 255)

    def protect(self, train, ctx):
        return train.images[:, :, :-1]


def test_core_rejects_over_budget_protector() -> None:
    with pytest.raises(BudgetViolation, match=r"over-budget.*6/255.*4/255"):
        run_protect(OverBudget(), tiny_data(), Context())
    with pytest.raises(ContractError, match="shape"):
        run_protect(WrongShape(), tiny_data(), Context())


def test_conformance_flags_the_over_budget_plugin() -> None:
    import types

    from arena import hookimpl

    mod = types.ModuleType("over")

    @hookimpl
    def arena_register_protectors(register):
        register(OverBudget)

    mod.arena_register_protectors = arena_register_protectors
    reg = Registry()
    reg.register_plugin(mod, name="over")
    import arena.conformance as conf

    old = conf.get_registry
    conf.get_registry = lambda: reg
    try:
        results = {r.name: r for r in check_plugin("protector", "over-budget")}
    finally:
        conf.get_registry = old
    failed = [r for r in results.values() if not r.ok]
    assert failed and all("exceeds the declared 4/255" in r.detail for r in failed)
    assert results["params: unknown name gives a one-line error"].ok


def test_patch_budget_counts_changed_area() -> None:
    from arena.budget import check_budget

    clean = torch.zeros((2, 3, 10, 10), dtype=torch.uint8)
    prot = clean.clone()
    prot[:, :, :3, :3] = 200
    assert check_budget(Budget("patch", 0.09), clean, prot, "p")["patch_area"] == pytest.approx(0.09)
    with pytest.raises(BudgetViolation):
        check_budget(Budget("patch", 0.05), clean, prot, "p")


def test_pixels_budget_counts_changed_positions_per_image() -> None:
    from arena.budget import check_budget

    clean = torch.full((3, 3, 8, 8), 100, dtype=torch.uint8)
    prot = clean.clone()
    prot[0, :, 2, 5] = 255  # one position, all channels: one pixel
    prot[1, 0, 0, 0] = 0  # one position, one channel: still one pixel
    prot[2, 1, 7, 7] = 101
    m = check_budget(Budget("pixels", 1), clean, prot, "ops")
    assert m["pixels"] == 1 and m["linf"] == pytest.approx(155 / 255)  # unbounded in value, bounded in count
    prot[2, 2, 3, 3] = 99  # a second position in one image breaks L0 1 even though the first images are fine
    with pytest.raises(BudgetViolation, match=r"ops: 2 changed pixels in one image exceeds the declared L0 1"):
        check_budget(Budget("pixels", 1), clean, prot, "ops")
    assert check_budget(Budget("pixels", 2), clean, prot, "ops")["pixels"] == 2
    assert Budget("pixels", 1).describe() == "L0 1 pixel" and Budget("pixels", 3).describe() == "L0 3 pixels"
    with pytest.raises(ArenaError, match=r"budget kind 'l0'.*'pixels'"):
        Budget("l0", 1)


def test_quality_metrics_behave() -> None:
    a = tiny_data().images
    assert psnr(a, a) == 100.0 and ssim(a, a) == pytest.approx(1.0)
    b = quantize(a, torch.full(a.shape, 8 / 255), 8 / 255)
    c = quantize(a, torch.full(a.shape, 2 / 255), 2 / 255)
    assert psnr(a, c) > psnr(a, b) > 25 and ssim(a, c) > ssim(a, b)
