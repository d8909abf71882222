"""``arena check-plugin``: run a plugin's contract on tiny data through the same stage functions the
tournament uses. Third-party authors call :func:`assert_conforms` from their own tests.

The tiny data set is synthetic and built here (class-coloured blobs plus noise) so the check depends on
no data-set plugin and no files.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .context import Context
from .data import ImageSet, Splits
from .params import ArenaError as ArenaErrorTypes
from .params import ParamError
from .registry import get_registry
from .stages import exploit_inputs, run_protect, run_purify
from .trainer import Recipe, train_victim


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


def tiny_data(n_per_class: int = 6, num_classes: int = 4, size: int = 16, seed: int = 0, origin: str = "train") -> ImageSet:
    """Learnable synthetic images: each class a coloured square at its own place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * num_classes
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = torch.rand((n, 3, size, size), generator=g) * 0.3
    s = max(2, size // 3)
    for k in range(num_classes):
        r, c = (k * 5) % (size - s), (k * 7) % (size - s)
        x[labels == k, k % 3, r : r + s, c : c + s] += 0.6
    return ImageSet((x.clamp(0, 1) * 255).round().to(torch.uint8), labels, [f"c{k}" for k in range(num_classes)], origin)


class _TinyNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _ctx(seed: int, root: Path) -> Context:
    d = Path(tempfile.mkdtemp(dir=root))
    return Context(seed=seed, scratch=d / "scratch", cache_dir=d / "cache")


def _run(results: list[CheckResult], name: str, fn: Any) -> Any:
    try:
        out = fn()
        results.append(CheckResult(name, True, out if isinstance(out, str) else ""))
        return out
    except Exception as e:  # the point of the check is to catch and report anything
        msg = str(e).strip() or type(e).__name__
        results.append(CheckResult(name, False, f"{type(e).__name__}: {msg.splitlines()[0] if msg else ''}"))
        return None


def _param_checks(cls: type, params: dict, results: list[CheckResult]) -> None:
    def bad_name() -> str:
        try:
            cls(**{**params, "__no_such_param__": 1})
        except ParamError as e:
            if "\n" in str(e):
                raise AssertionError("error message spans several lines") from None
            return str(e)
        raise AssertionError("an unknown param was accepted")

    def bad_value() -> str:
        spec = cls.params.params
        if not spec:
            return "no params declared"
        for p in spec:
            wrong: Any = "not-a-valid-value" if p.type is not str else 12345
            try:
                cls(**{**params, p.name: wrong})
            except ParamError as e:
                if "\n" in str(e) or p.name not in str(e):
                    raise AssertionError(f"error for '{p.name}' is not one line naming the param: {e}") from None
                continue
            raise AssertionError(f"param '{p.name}' accepted the value {wrong!r}")
        return f"{len(spec)} params reject wrong types"

    _run(results, "params: unknown name gives a one-line error", bad_name)
    _run(results, "params: wrong type gives a one-line error naming the param", bad_value)


def check_protector(name: str, params: dict | None = None, size: int = 16) -> list[CheckResult]:
    params = params or {}
    cls = get_registry().entry("protectors", name).obj
    results: list[CheckResult] = []
    _param_checks(cls, params, results)
    train = tiny_data(size=size)
    with tempfile.TemporaryDirectory() as root:
        root_p = Path(root)
        first = _run(results, "protect: uint8, same shape and labels, budget holds after quantization",
                     lambda: run_protect(cls(**params), train, _ctx(0, root_p)))
        if first is not None:
            def same_seed() -> str:
                again = run_protect(cls(**params), train, _ctx(0, root_p))
                if not torch.equal(first.data.images, again.data.images):
                    raise AssertionError("two runs with seed 0 (fresh caches) gave different images")
                return "identical output for seed 0"

            _run(results, "deterministic for a seed", same_seed)
        _run(results, "a batch of one works",
             lambda: run_protect(cls(**params), train.subset([0], origin="train"), _ctx(0, root_p)) and "ok")

        def refuses_other_splits() -> str:
            try:
                run_protect(cls(**params), tiny_data(size=size, origin="test"), _ctx(0, root_p))
            except ArenaErrorTypes:
                return "test split refused"
            raise AssertionError("a protector was handed the test split")

        _run(results, "never receives the test split", refuses_other_splits)
    return results


def _protected_and_splits(size: int) -> tuple[ImageSet, Splits]:
    train = tiny_data(size=size)
    g = torch.Generator().manual_seed(1)
    noise = ((torch.rand(train.images.shape, generator=g) * 2 - 1) * 8).round()
    protected = train.with_images((train.images.float() + noise).clamp(0, 255).to(torch.uint8), "protected:conformance")
    raw = tiny_data(n_per_class=3, size=size, seed=2, origin="raw")
    raw = ImageSet(raw.images, torch.full_like(raw.labels, -1), raw.classes, "raw")
    test = tiny_data(n_per_class=3, size=size, seed=3, origin="test")
    return protected, Splits(train=train, raw=raw, test=test)


def check_exploiter(name: str, params: dict | None = None, size: int = 16) -> list[CheckResult]:
    params = params or {}
    cls = get_registry().entry("exploiters", name).obj
    results: list[CheckResult] = []
    _param_checks(cls, params, results)
    protected, splits = _protected_and_splits(size)
    seen: list[str] = []

    class Spy(cls):  # records what the arena hands the plugin; behaviour unchanged
        def purify(self, protected: ImageSet, raw: ImageSet | None, ctx: Context) -> Any:
            seen.append(protected.origin)
            if raw is not None:
                seen.append(raw.origin)
            return super().purify(protected, raw, ctx)

    Spy.__name__ = cls.__name__
    with tempfile.TemporaryDirectory() as root:
        root_p = Path(root)
        ex = cls(**params)
        if ex.has_purify:
            def purify_once() -> Any:
                p, raw = exploit_inputs([ex], protected, splits)
                return run_purify([Spy(**params)], p, raw, _ctx(0, root_p))

            first = _run(results, "purify: uint8, same shape and labels", purify_once)
            if first is not None:
                def same_seed() -> str:
                    p, raw = exploit_inputs([ex], protected, splits)
                    again = run_purify([cls(**params)], p, raw, _ctx(0, root_p))
                    if not torch.equal(first.data.images, again.data.images):
                        raise AssertionError("two runs with seed 0 (fresh caches) gave different images")
                    return "identical output for seed 0"

                _run(results, "purify: deterministic for a seed", same_seed)

            def batch_of_one() -> str:
                one = protected.subset([0])
                p, raw = exploit_inputs([ex], one, splits)
                run_purify([cls(**params)], p, raw, _ctx(0, root_p))
                return "ok"

            _run(results, "purify: a batch of one works", batch_of_one)

        def only_allowed_data() -> str:
            bad = [o for o in seen if not (o.startswith(("protected:", "purified:")) or o == "raw")]
            if bad:
                raise AssertionError(f"exploiter received '{bad[0]}' data")
            if "raw" in seen and not ex.uses_raw_pool:
                raise AssertionError("exploiter received the raw pool without declaring uses_raw_pool")
            try:
                exploit_inputs([ex], splits.train, splits)
            except ArenaErrorTypes:
                return f"received only {sorted(set(seen)) or ['nothing']}; clean train refused"
            raise AssertionError("the arena handed clean train images to an exploiter")

        _run(results, "never receives clean train or test images", only_allowed_data)
        if ex.has_training_mod:
            recipe = Recipe(epochs=2, batch_size=8, lr=0.05)

            def train_once() -> list[float]:
                mod = cls(**params).training_mod(_ctx(0, root_p))
                mods = [mod] if mod is not None else []
                torch.manual_seed(0)
                r = train_victim(_TinyNet(protected.num_classes), protected, splits.test, recipe, seed=0, mods=mods)
                return r.acc_curve + r.val_curve + sorted(r.extra.values())

            a = _run(results, "training change: a short victim training runs", train_once)
            if a is not None:
                def same() -> str:
                    b = train_once()
                    if a != b:
                        raise AssertionError(f"same seed gave {a} then {b}")
                    return "identical curves for seed 0"

                _run(results, "training change: deterministic for a seed", same)
    return results



def check_plugin(kind: str, name: str, params: dict | None = None, *, size: int = 16) -> list[CheckResult]:
    """Run every contract check for a registered protector or exploiter."""
    if kind == "protector":
        return check_protector(name, params, size)
    if kind == "exploiter":
        return check_exploiter(name, params, size)
    raise ParamError(f"kind '{kind}': expected 'protector' or 'exploiter'")


def assert_conforms(kind: str, name: str, params: dict | None = None, *, size: int = 16) -> list[CheckResult]:
    results = check_plugin(kind, name, params, size=size)
    failed = [r for r in results if not r.ok]
    if failed:
        raise AssertionError(f"{kind} '{name}' fails its contract: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))
    return results
