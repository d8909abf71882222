"""``arena check-plugin``: run a plugin's contract on tiny data through the same stage functions the
tournament uses. Third-party authors call :func:`assert_conforms` from their own tests.

Every stage check runs under each of :data:`SEEDS`, every hook's data arguments are hashed before and
after the call (a hook that writes into its input would corrupt whatever the caller reuses), and plugin
code runs under the worker's audit hook with the tiny clean splits stored where a tournament keeps its
own: an exploiter that reads them from disk fails "never receives clean train or test images".

The tiny data set is synthetic and built here (class-coloured blobs plus noise) so the check depends on
no data-set plugin and no files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .context import Context
from .contracts import Exploiter, Protector
from .data import ImageSet, Splits
from .data import cache_root as data_cache_root
from .guard import plugin_code
from .integrity import IntegrityViolation, content_hash
from .params import ArenaError as ArenaErrorTypes
from .params import ParamError
from .registry import Registry, get_registry
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


#: Seeds every stage check runs under: a plugin that breaks (or is not reproducible) for one seed only fails.
SEEDS = (0, 1)


def _every_seed(results: list[CheckResult], contract: str, determinism: str, run: Callable[[int], Any]) -> None:
    """For each of :data:`SEEDS`: the stage keeps its contract, and a second run on the same seed (fresh
    caches) gives the same images. A plugin that breaks only on seed 1 fails here."""
    for seed in SEEDS:
        first = _run(results, contract.format(seed=seed), lambda seed=seed: run(seed))
        if first is None:
            continue

        def same_seed(first: Any = first, seed: int = seed) -> str:
            if not torch.equal(first.data.images, run(seed).data.images):
                raise AssertionError(f"two runs with seed {seed} (fresh caches) gave different images")
            return f"identical output for seed {seed}"

        _run(results, determinism.format(seed=seed), same_seed)

# The data arguments of each hook, by position: hashed before and after every call.
_HOOK_ARGS = {"budget": ("train",), "protect": ("train",), "fit": ("train",), "purify": ("protected", "raw")}


class _Sandbox:
    """The worker's layout in miniature: the clean splits stored under ``<root>/.cache`` (as a tournament
    stores them), plugin directories under ``<root>/.plugins``, and plugin code run under the same audit
    hook as in a worker (:mod:`arena.guard`). A plugin that goes looking for the stored splits, or opens the
    arena's decoded data sets, is caught even when it swallows the refusal and returns honest-looking data."""

    def __init__(self, root: Path, splits: Splits) -> None:
        self.root = root
        stored = root / ".cache" / "data" / "conformance"
        stored.mkdir(parents=True)
        for name in ("train", "raw", "test"):
            getattr(splits, name).save(stored / f"{name}.npz")
        self.guarded = (root / ".cache", data_cache_root() / "datasets")
        self.breaches: list[str] = []
        self.changed: list[str] = []  # "hook() changed its <arg> input"
        self.seen: list[str] = []  # origins of every data argument a hook received
        self.n = 0

    def ctx(self, seed: int) -> Context:
        """A fresh Context (fresh scratch and cache) per call, so a repeat proves determinism, not caching."""
        self.n += 1
        base = self.root / ".plugins"
        return Context(seed=seed, scratch=base / "scratch" / str(self.n), cache_dir=base / "cache" / str(self.n))

    def call(self, who: str, fn: Callable[[], Any]) -> Any:
        try:
            with plugin_code(who, self.guarded):
                return fn()
        except IntegrityViolation as e:
            self.breaches.append(str(e))
            raise

    def watched(self, cls: type, base: type) -> type:
        """A subclass of the plugin whose own hooks record what they received and whether they changed
        it; hooks the plugin does not override stay inherited (``has_purify`` and friends see no change)."""
        sandbox = self
        ns: dict[str, Any] = {}
        for hook, names in _HOOK_ARGS.items():
            if not hasattr(base, hook) or getattr(cls, hook) is getattr(base, hook):
                continue

            def wrapper(self: Any, *args: Any, _hook: str = hook, _names: tuple = names, **kw: Any) -> Any:
                before = [(i, content_hash(a)) for i, a in enumerate(args) if isinstance(a, ImageSet)]
                sandbox.seen += [a.origin for a in args if isinstance(a, ImageSet)]
                try:
                    return getattr(super(watched, self), _hook)(*args, **kw)
                finally:
                    for i, h in before:
                        if content_hash(args[i]) != h:
                            arg = _names[i] if i < len(_names) else f"argument {i}"
                            sandbox.changed.append(f"{_hook}() changed its {arg} input in place")

            ns[hook] = wrapper
        watched = type(cls.__name__, (cls,), ns)
        watched.__module__, watched.__qualname__ = cls.__module__, cls.__qualname__
        return watched

    def unchanged(self) -> str:
        if self.changed:
            raise AssertionError(f"{self.changed[0]} (hooks must treat their inputs as read-only)")
        return "no hook changed its inputs"

    def no_breach(self) -> None:
        if self.breaches:
            raise AssertionError(self.breaches[0])


def _splits(size: int) -> Splits:
    train = tiny_data(size=size)
    raw = tiny_data(n_per_class=3, size=size, seed=2, origin="raw")
    raw = ImageSet(raw.images, torch.full_like(raw.labels, -1), raw.classes, "raw")
    test = tiny_data(n_per_class=3, size=size, seed=3, origin="test")
    return Splits(train=train, raw=raw, test=test)


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


def _registry(reg: Registry | None) -> Registry:
    return reg if reg is not None else get_registry()


def check_params_for(cls: type, params: dict | None) -> tuple[dict, str]:
    """The params a check runs with and a line saying where they came from.

    Given params win whole (``{}`` means the paper defaults); otherwise the plugin's ``check_params`` apply,
    validated here like any params so a bad declaration fails in one line naming the plugin and the key
    before anything runs, instead of as a confusing failure of every check."""
    if params is not None:
        return dict(params), f"given params over the defaults: {params}"
    who = f"{cls.kind} '{cls.name}'"
    declared = getattr(cls, "check_params", None) or {}
    if not isinstance(declared, dict):
        raise ParamError(f"{who}: check_params must be a dict of param name to value, got {type(declared).__name__}")
    cls.params.validate(declared, owner=f"{who} check_params")
    if not declared:
        return {}, "the defaults (the plugin declares no check_params)"
    return dict(declared), f"the plugin's check_params over the defaults: {declared}"


def _params_used(results: list[CheckResult], source: str) -> None:
    results.append(CheckResult("params used", True, source))


def check_protector(name: str, params: dict | None = None, size: int = 16, *, reg: Registry | None = None
                    ) -> list[CheckResult]:
    base_cls = _registry(reg).entry("protectors", name).obj
    params, source = check_params_for(base_cls, params)
    results: list[CheckResult] = []
    _params_used(results, source)
    _param_checks(base_cls, params, results)
    splits = _splits(size)
    train = splits.train
    who = f"protector '{name}'"
    with tempfile.TemporaryDirectory() as root:
        box = _Sandbox(Path(root), splits)
        cls = box.watched(base_cls, Protector)

        def protect(data: ImageSet, seed: int) -> Any:
            return box.call(who, lambda: run_protect(cls(**params), data, box.ctx(seed)))

        _every_seed(results, "protect (seed {seed}): uint8, same shape and labels, budget holds after quantization",
                    "deterministic for seed {seed}", lambda seed: protect(train, seed))
        _run(results, "a batch of one works", lambda: protect(train.subset([0], origin="train"), 0) and "ok")

        def refuses_other_splits() -> str:
            box.no_breach()
            try:
                protect(splits.test, 0)
            except ArenaErrorTypes:
                return "test split refused; no stored split opened"
            raise AssertionError("a protector was handed the test split")

        _run(results, "never receives the test split (in memory or from files)", refuses_other_splits)
        _run(results, "hooks leave their inputs unchanged", box.unchanged)
    return results


def _protected(train: ImageSet) -> ImageSet:
    g = torch.Generator().manual_seed(1)
    noise = ((torch.rand(train.images.shape, generator=g) * 2 - 1) * 8).round()
    return train.with_images((train.images.float() + noise).clamp(0, 255).to(torch.uint8), "protected:conformance")


def check_exploiter(name: str, params: dict | None = None, size: int = 16, *, reg: Registry | None = None
                    ) -> list[CheckResult]:
    base_cls = _registry(reg).entry("exploiters", name).obj
    params, source = check_params_for(base_cls, params)
    results: list[CheckResult] = []
    _params_used(results, source)
    _param_checks(base_cls, params, results)
    splits = _splits(size)
    protected = _protected(splits.train)
    who = f"exploiter '{name}'"
    with tempfile.TemporaryDirectory() as root:
        box = _Sandbox(Path(root), splits)
        cls = box.watched(base_cls, Exploiter)
        ex = box.call(who, lambda: cls(**params))

        def purify(data: ImageSet, seed: int) -> Any:
            def go() -> Any:
                e = cls(**params)
                p, raw = exploit_inputs([e], data, splits)
                return run_purify([e], p, raw, box.ctx(seed))

            return box.call(who, go)

        if ex is not None and ex.has_purify:
            _every_seed(results, "purify (seed {seed}): uint8, same shape and labels",
                        "purify: deterministic for seed {seed}", lambda seed: purify(protected, seed))
            _run(results, "purify: a batch of one works", lambda: purify(protected.subset([0]), 0) and "ok")

        if ex is not None and ex.has_training_mod:
            recipe = Recipe(epochs=2, batch_size=8, lr=0.05)

            def train_once(seed: int) -> list[float]:
                def go() -> list[float]:
                    mod = cls(**params).training_mod(box.ctx(seed))
                    mods = [mod] if mod is not None else []
                    torch.manual_seed(seed)
                    r = train_victim(_TinyNet(protected.num_classes), protected, splits.test, recipe, seed=seed,
                                     mods=mods)
                    return r.acc_curve + r.val_curve + sorted(r.extra.values())

                return box.call(who, go)

            for seed in SEEDS:
                a = _run(results, f"training change (seed {seed}): a short victim training runs",
                         lambda seed=seed: train_once(seed))
                if a is not None:
                    def same(a: Any = a, seed: int = seed) -> str:
                        b = train_once(seed)
                        if a != b:
                            raise AssertionError(f"seed {seed} gave {a} then {b}")
                        return f"identical curves for seed {seed}"

                    _run(results, f"training change: deterministic for seed {seed}", same)

        def only_allowed_data() -> str:
            box.no_breach()
            bad = [o for o in box.seen if not (o.startswith(("protected:", "purified:")) or o == "raw")]
            if bad:
                raise AssertionError(f"exploiter received '{bad[0]}' data")
            if "raw" in box.seen and ex is not None and not ex.uses_raw_pool:
                raise AssertionError("exploiter received the raw pool without declaring uses_raw_pool")
            try:
                exploit_inputs([base_cls(**params)], splits.train, splits)
            except ArenaErrorTypes:
                return f"received only {sorted(set(box.seen)) or ['nothing']}; clean train refused; no stored split opened"
            raise AssertionError("the arena handed clean train images to an exploiter")

        _run(results, "never receives clean train or test images (in memory or from files)", only_allowed_data)
        _run(results, "hooks leave their inputs unchanged", box.unchanged)
    return results


def check_plugin(kind: str, name: str, params: dict | None = None, *, size: int = 16,
                 reg: Registry | None = None) -> list[CheckResult]:
    """Run every contract check for a registered protector or exploiter (``reg``: the process registry).

    ``params=None`` runs the plugin's ``check_params`` (cheap settings its author declares) over the
    defaults; given params, even ``{}``, replace them. The first result says which were used."""
    if kind == "protector":
        return check_protector(name, params, size, reg=reg)
    if kind == "exploiter":
        return check_exploiter(name, params, size, reg=reg)
    raise ParamError(f"kind '{kind}': expected 'protector' or 'exploiter'")


def assert_conforms(kind: str, name: str, params: dict | None = None, *, size: int = 16,
                    reg: Registry | None = None) -> list[CheckResult]:
    """For a plugin's own test suite: raises with every failed check in one message."""
    results = check_plugin(kind, name, params, size=size, reg=reg)
    failed = [r for r in results if not r.ok]
    if failed:
        raise AssertionError(f"{kind} '{name}' fails its contract: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))
    return results
