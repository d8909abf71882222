"""Stage execution inside a worker process (a Ray actor, or the driver itself in tests).

Workers build their own plugin registry from entry points plus the tournament's extra plugin modules:
driver-only plugins do not exist in a worker. A worker keeps loaded splits between cells so a GPU
actor reuses the data it already has.
"""

from __future__ import annotations

import math
import time
import traceback
from typing import Any

import torch

from ..budget import BudgetViolation
from ..context import Context
from ..data import ImageSet, Splits
from ..data import cache_root as data_cache_root
from ..guard import plugin_code
from ..integrity import IntegrityError, IntegrityViolation, content_hash
from ..params import ArenaError
from ..registry import get_registry, load_extra_plugins
from ..stages import exploit_inputs, run_protect, run_purify, run_train
from ..trainer import Recipe
from .grid import CLEAN_ONLY, Cell, ProtectJob, PurifyJob, content_key
from .stagecache import SPLITS, StageCache


def _error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if not isinstance(e, ArenaError) else msg


def _status(e: BaseException) -> str:
    if isinstance(e, IntegrityViolation):
        return "integrity"
    return "invalid" if isinstance(e, BudgetViolation) else "failed"


def _oom(e: BaseException) -> bool:
    """CUDA out of memory is the node's state (another actor's share, fragmentation), not the plugin's."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or "CUDA out of memory" in str(e)


def _infra(why: str, missing: tuple[str, str] | None = None, oom: bool = False) -> dict[str, Any]:
    """An infrastructure fault: the driver retries the job (recomputing ``missing`` first; after CUDA out
    of memory, once on a whole GPU when there is one), never a row."""
    return {"infra": why, "missing": list(missing) if missing else None, "oom": oom}


def _fatal(e: IntegrityError) -> dict[str, Any]:
    """Stored data failed its hash check: the driver stops the tournament with this line, writing no row."""
    return {"status": "integrity", "fatal": str(e), "error": str(e), "metrics": {}, "seconds": 0.0}


class _Missing(Exception):
    """A stage input that is not in storage (written on a node whose disk this one cannot see, or lost)."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"the {kind} output {key} is not in the stage storage")
        self.kind, self.key = kind, key

    def result(self) -> dict[str, Any]:
        return _infra(str(self), (self.kind, self.key))


class StageRunner:
    """Runs protect / purify / train jobs against the stage cache. Every method returns a small dict
    (status, error, metrics): large arrays stay on disk and never enter Ray's object store."""

    def __init__(self, cache_root: str, device: str = "cpu", threads: int | None = None,
                 plugin_modules: list[str] | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.cache = StageCache(cache_root)  # a local directory or a storage URI (arena/storage.py)
        self.plugin_modules = list(plugin_modules or [])
        # Plugin-visible directories live in their own tree, which holds no split (issue 18: the clean
        # splits used to sit next to ``ctx.cache_dir``). Everything under ``guarded`` is refused to plugin code.
        # With remote storage the stage cache is not on this node's disk: plugin directories go to a local
        # folder of this node, named after the storage so two tournaments never share one.
        local = self.cache.root
        self.plugin_root = (local.parent / ".plugins" if local is not None else
                            data_cache_root() / "tournament-plugins" / content_key("storage", self.cache.uri))
        self.guarded = tuple(p for p in (local, data_cache_root() / "datasets") if p is not None)
        self.device = torch.device(device)
        self.import_breach: str | None = None
        try:
            with plugin_code("a plugin module being imported", self.guarded):
                self.reg = get_registry()
                load_extra_plugins(self.reg, plugin_modules or [])
        except IntegrityViolation as e:  # every stage of this actor then fails with it
            self.import_breach = str(e)
            self.reg = get_registry()
        self._splits: dict[str, Splits] = {}
        self._hashes: dict[str, dict[str, str]] = {}

    # -- data ------------------------------------------------------------------------------------
    def splits(self, data_key: str) -> Splits:
        """The clean splits, loaded once per actor and checked against the manifest's hashes."""
        if data_key not in self._splits:
            if not self.cache.has_splits(data_key):
                raise _Missing("data", data_key)
            self._hashes[data_key] = self.cache.split_hashes(data_key)
            self._splits[data_key] = Splits(*(self.cache.load_split(data_key, n) for n in SPLITS))
        return self._splits[data_key]

    def _check_memory(self, data_key: str, names: tuple[str, ...]) -> None:
        """Later cells in this actor reuse the loaded splits, so one changed in memory while plugin code
        ran fails this cell and is dropped (reloaded from verified storage by the next cell)."""
        sp = self._splits.get(data_key)
        if sp is None:
            return
        for n in names:
            if content_hash(getattr(sp, n)) != self._hashes[data_key][n]:
                del self._splits[data_key]
                raise IntegrityViolation(f"the clean {n} split changed in memory while plugin code ran")

    def _ctx(self, seed: int, plugin: str, plugin_hash: str = "", recipe: Recipe | None = None) -> Context:
        """Plugin caches live in one directory per plugin code hash (computed by the driver in
        ``grid.expand``), in a tree that holds no split: plugins name their artefacts by content (plugin
        name, params, input hash) but not by their code, so an edited plugin starts from an empty cache
        while entries of one module still share theirs (``jcdp`` and ``jcdp-uncond`` train one DDPM)."""
        scratch = self.plugin_root / "scratch" / plugin
        cache_dir = self.plugin_root / "cache" / plugin_hash if plugin_hash else self.plugin_root / "cache"
        return Context(device=self.device, seed=seed, scratch=scratch, cache_dir=cache_dir, recipe=recipe or Recipe())

    def _plugin_code(self, who: str) -> Any:
        if self.import_breach:
            raise IntegrityViolation(self.import_breach)
        return plugin_code(who, self.guarded)

    # -- stages ----------------------------------------------------------------------------------
    def protect(self, job: ProtectJob) -> dict[str, Any]:
        if self.cache.has("protect", job.key):
            return {**self.cache.meta("protect", job.key), "cached": True}
        try:
            train = self.splits(job.data_key).train
        except IntegrityError as e:
            return _fatal(e)
        except _Missing as m:
            return m.result()
        try:
            try:
                with self._plugin_code(f"protector '{job.protector.name}'"):
                    protector = self.reg.protector(job.protector.name, job.protector.params)
                    out = run_protect(protector, train, self._ctx(job.seed, job.protector.name, job.plugin_hash,
                                                                       job.recipe))
            finally:
                self._check_memory(job.data_key, ("train",))
            meta = {"status": "ok", "error": None, "metrics": out.metrics, "seconds": out.seconds,
                    "info": out.info}
            self.cache.save("protect", job.key, out.data, meta)
        except Exception as e:  # a plugin failure fails its cells, never the tournament
            if _oom(e):
                return _infra(f"protect: {_error_text(e)}", oom=True)
            meta = {"status": _status(e), "error": f"protect: {_error_text(e)}", "metrics": {}, "seconds": 0.0,
                    "traceback": traceback.format_exc(limit=8)}
        return meta

    def _mixed(self, job: PurifyJob) -> ImageSet:
        """Partial poisoning: a fixed, seeded subset of the train split carries the protection."""
        clean = self.splits(job.data_key).train
        protected = self.cache.load("protect", job.protect_key) if job.protect_key else None
        if job.poison_ratio >= 1.0 and protected is not None:
            return protected
        n = len(clean)
        g = torch.Generator().manual_seed(job.seed * 1009 + int(round(job.poison_ratio * 1000)))
        perm = torch.randperm(n, generator=g)
        k = int(round(job.poison_ratio * n))
        poisoned = torch.zeros(n, dtype=torch.bool)
        poisoned[perm[:k]] = True
        if job.subset == CLEAN_ONLY or protected is None:
            return clean.subset(torch.nonzero(~poisoned).flatten(), origin="train")
        images = torch.where(poisoned[:, None, None, None], protected.images, clean.images)
        return protected.with_images(images, protected.origin)

    def purify(self, job: PurifyJob) -> dict[str, Any]:
        if self.cache.has("purify", job.key):
            return {**self.cache.meta("purify", job.key), "cached": True}
        try:
            if job.protect_key and not self.cache.has("protect", job.protect_key):
                raise _Missing("protect", job.protect_key)
            data = self._mixed(job)
            splits = self.splits(job.data_key)
        except IntegrityError as e:
            return _fatal(e)
        except _Missing as m:
            return m.result()
        try:
            metrics: dict[str, Any] = {}
            seconds = 0.0
            if job.subset != CLEAN_ONLY:
                try:
                    with self._plugin_code(f"exploiter '{job.exploiter.label}'"):
                        exploiters = [self.reg.exploiter(p.name, p.params) for p in job.exploiter.parts]
                        inputs, raw = exploit_inputs(exploiters, data, splits)
                        out = run_purify(exploiters, inputs, raw,
                                         self._ctx(job.seed, job.exploiter.label, job.plugin_hash, job.recipe))
                finally:
                    self._check_memory(job.data_key, SPLITS)
                data, metrics, seconds = out.data, out.metrics, out.seconds
            meta = {"status": "ok", "error": None, "metrics": metrics, "seconds": seconds}
            self.cache.save("purify", job.key, data, meta)
        except Exception as e:
            if _oom(e):
                return _infra(f"purify: {_error_text(e)}", oom=True)
            meta = {"status": _status(e), "error": f"purify: {_error_text(e)}", "metrics": {}, "seconds": 0.0,
                    "traceback": traceback.format_exc(limit=8)}
        return meta

    def train(self, cell: Cell) -> dict[str, Any]:
        """Train + evaluate one cell and return its leaderboard fields."""
        t0 = time.perf_counter()
        try:
            if not self.cache.has("purify", cell.purify_key):
                raise _Missing("purify", cell.purify_key)
            data = self.cache.load("purify", cell.purify_key)
            test = self.splits(cell.data_key).test
        except IntegrityError as e:
            return _fatal(e)
        except _Missing as m:
            return m.result()
        try:
            try:
                with self._plugin_code(f"exploiter '{cell.exploiter.label}'"):
                    exploiters = ([self.reg.exploiter(p.name, p.params) for p in cell.exploiter.parts]
                                  if cell.subset != CLEAN_ONLY else [])
                    ctx = self._ctx(cell.seed, cell.exploiter.label, cell.plugin_hash)
                    res = run_train(cell.arch.name, data, test, cell.train_recipe(), seed=cell.seed,
                                    ctx=ctx, exploiters=exploiters, description=cell.label(),
                                    clean_train=self.splits(cell.data_key).train)
            finally:  # the victim was evaluated on exactly the stored test split
                self._check_memory(cell.data_key, ("test",))
            if not math.isfinite(res.clean_acc):
                raise ArenaError("victim accuracy is not finite")
            return {"status": "ok", "error": None, "clean_acc": res.clean_acc, "best_acc": res.best_acc,
                    "best_epoch": res.best_epoch, "selected_acc": res.selected_acc, "selected_epoch": res.selected_epoch,
                    "acc_curve": res.acc_curve, "val_curve": res.val_curve, "train_acc": res.train_acc,
                    "train_s": res.seconds, "epochs": res.epochs, "train_images": len(data),
                    "images_per_s": res.images_per_s, "extra": res.extra, "device": self.device_name()}
        except Exception as e:
            if _oom(e):
                return _infra(f"train: {_error_text(e)}", oom=True)
            return {"status": _status(e), "error": f"train: {_error_text(e)}", "train_s": time.perf_counter() - t0,
                    "device": self.device_name(), "traceback": traceback.format_exc(limit=8)}

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu x{torch.get_num_threads()}"

    def ping(self) -> bool:
        return True

    def versions(self) -> dict[str, Any]:
        """The code this actor runs (the driver compares it with its own before sending work)."""
        from .versions import code_versions

        return code_versions(self.plugin_modules)
