"""Expand a tournament into a DAG of stages keyed by content.

protect(data, protector, seed) runs once per data set, not once per cell; purify(protected, ratio,
exploiter, seed) once per protected set and data-level exploiter (training-level exploiters share one
pass-through job); train(purified, architecture, recipe, seed) once per cell.
Every key hashes what determines the output (data fingerprint, plugin name, params, seed, arena version)
and the code that produces it (``arena/codehash.py``: the plugin's source and the sibling modules it
imports, the core modules the stage runs, the torch version, the device kind of that stage's resources
and, for train, the precision), so equal work is shared across cells and reruns, and an edit recomputes
exactly the stages whose code changed plus everything downstream of them (a protect key is inside its
purify keys, a purify key inside its train keys). Plugin ``version`` attributes are still hashed but no longer relied on.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..codehash import CodeHasher, device_kind, torch_version
from ..registry import Registry
from ..trainer import Recipe
from .config import CONTROL_LABEL, ArchSpec, DatasetSpec, ExploiterSpec, PluginSpec, TournamentConfig

CLEAN_ONLY = "clean-only"
CONTROL_PROTECTOR = PluginSpec(CONTROL_LABEL, {})
CONTROL_EXPLOITER = ExploiterSpec(())
IDENTITY = ExploiterSpec(())  # the purify job of training-level exploiters: data passed through unchanged


def content_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@dataclass(frozen=True)
class ProtectJob:
    key: str
    data_key: str
    protector: PluginSpec
    seed: int
    plugin_hash: str = ""  # names the plugin's own cache directory (ctx.cache_path)
    recipe: Recipe | None = None  # ctx.recipe for a protector that declares ``uses_recipe`` (then in the key)


@dataclass(frozen=True)
class PurifyJob:
    key: str
    protect_key: str
    data_key: str
    exploiter: ExploiterSpec
    poison_ratio: float
    subset: str  # "all" or "clean-only" (the partial-poisoning control)
    seed: int
    plugin_hash: str = ""
    code_hash: str = ""  # this stage's code and everything upstream of it
    recipe: Recipe | None = None  # ctx.recipe when an exploiter part declares ``uses_recipe`` (then in the key)


@dataclass(frozen=True)
class Cell:
    key: str
    purify_key: str
    data_key: str
    dataset: DatasetSpec
    protector: PluginSpec
    exploiter: ExploiterSpec
    arch: ArchSpec
    poison_ratio: float
    subset: str
    seed: int
    plugin_hash: str = ""
    code_hash: str = ""  # one hash of all the code that produced the cell (protect, purify, train)
    amp: bool = False  # the precision resolved on the driver; every worker trains the cell in it

    def label(self) -> str:
        extra = f" r={self.poison_ratio:g}" if self.poison_ratio < 1 else ""
        if self.subset == CLEAN_ONLY:
            return f"{CONTROL_LABEL} / {self.arch.entry_label} s{self.seed}{extra}"
        return (f"{self.protector.entry_label} x {self.exploiter.entry_label} / {self.arch.entry_label} "
                f"s{self.seed}{extra}")

    @property
    def precision(self) -> str:
        return "bf16" if self.amp else "fp32"

    def train_recipe(self) -> Recipe:
        """The tournament's recipe with ``amp: auto`` replaced by the driver's decision."""
        return replace(self.arch.recipe, amp="on" if self.amp else "off")


@dataclass
class Grid:
    protects: dict[str, ProtectJob] = field(default_factory=dict)
    purifies: dict[str, PurifyJob] = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=dict)

    def naive_counts(self) -> dict[str, int]:
        """What a cell-by-cell runner would compute: every stage once per cell."""
        n = len(self.cells)
        return {"protect": n, "purify": n, "train": n}

    def counts(self) -> dict[str, int]:
        return {"protect": len(self.protects), "purify": len(self.purifies), "train": len(self.cells)}


def _purifies(reg: Registry, name: str) -> bool:
    """Whether an exploiter changes data (has its own ``purify``) rather than only the training recipe."""
    from ..contracts import Exploiter

    return reg.entry("exploiters", name).obj.purify is not Exploiter.purify


def _plugin_version(reg: Registry, kind: str, name: str) -> str:
    e = reg.entry(kind, name)
    return f"{getattr(e.obj, 'version', '1')}@{reg.sources.get(e.plugin, ('', '0'))[1]}"


def _recipe_for(reg: Registry, kind: str, names: list[str], recipe: Recipe) -> Recipe | None:
    """The tournament's recipe if one of the stage's plugins declares it depends on it, else None."""
    return recipe if any(getattr(reg.entry(kind, n).obj, "uses_recipe", False) for n in names) else None


def _recipe_key(recipe: Recipe | None) -> list[Any]:
    """Key parts for a stage's recipe: none when it gets none, so other stages keep their keys."""
    return [] if recipe is None else [recipe.to_dict()]


def _plugins_hash(hashes: list[str]) -> str:
    """Names the plugin cache directory of a stage: entries of one module (``jcdp``, ``jcdp-uncond``) share it."""
    return content_key(sorted(set(hashes)))[:16] if hashes else ""


def _train_shape(data_dir: Path) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and class count of a stored train split, read from the npz headers without the pixels."""
    with zipfile.ZipFile(data_dir / "train.npz") as z, z.open("images.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape = read(f)[0]
    with np.load(data_dir / "train.npz", allow_pickle=True) as z:
        classes = len(z["classes"])
    return (int(shape[1]), int(shape[2]), int(shape[3])), classes


def resolve_precision(cfg: TournamentConfig, data_dirs: dict[int, Path]) -> dict[tuple[int, str], bool]:
    """Each architecture's ``amp`` on each data set, decided once on the driver (``arena/precision.py``
    measures ``auto`` on a CPU with the workers' thread count) so that the cell keys and rows carry it and
    every worker trains a cell in the same precision."""
    from ..models import build_model
    from ..precision import resolve_amp
    from ..trainer import use_channels_last

    cpus, gpus = cfg.resources_of("train")  # the resources the training actors get
    device = torch.device("cuda" if gpus > 0 else "cpu")
    threads = max(1, int(cpus))
    out: dict[tuple[int, str], bool] = {}
    for di in range(len(cfg.datasets)):
        shape, classes = _train_shape(data_dirs[di])
        for arch in cfg.architectures:
            r = arch.recipe
            model = build_model(arch.name, classes, shape[0], shape[1], seed=0) if r.amp == "auto" else None
            out[(di, arch.name)] = resolve_amp(r.amp, device, model, shape, classes, r.batch_size,  # type: ignore[arg-type]
                                               channels_last=use_channels_last(r.channels_last, device),
                                               threads=threads)
    return out


def expand(cfg: TournamentConfig, data_keys: dict[int, str], reg: Registry, *,
           amp: dict[tuple[int, str], bool] | None = None) -> Grid:
    """``data_keys[i]`` is the content fingerprint of ``cfg.datasets[i]``'s splits; ``amp[(i, arch)]`` is the
    resolved precision of the architecture named ``arch`` on data set ``i`` (``arena/precision.py``; left
    out, ``amp: auto`` counts as float32 and ``on``/``off`` as written)."""
    g = Grid()
    code = CodeHasher(reg)
    arch_code = code.architectures()
    # each stage's key names the device kind its own actors get (per-stage resources: a protect stage on a
    # whole GPU while training runs on CPUs), not the train stage's
    stage_code = {s: [code.core(s), arch_code if s != "train" else "", torch_version(),
                      device_kind(cfg.resources_of(s)[1])] for s in ("protect", "purify", "train")}

    def resolved(di: int, arch: ArchSpec) -> bool:
        if amp is not None and (di, arch.name) in amp:
            return amp[(di, arch.name)]
        return arch.recipe.amp == "on"

    def train_code(uk_code: str, arch: ArchSpec, ex_code: list[str], on: bool) -> str:
        return content_key(uk_code, stage_code["train"], code.entry("architectures", arch.name), ex_code,
                           "bf16" if on else "fp32")

    for di, ds in enumerate(cfg.datasets):
        dk = data_keys[di]
        for prot in cfg.protectors:
            p_hash = code.entry("protectors", prot.name)
            p_code = content_key(p_hash, stage_code["protect"])
            p_recipe = _recipe_for(reg, "protectors", [prot.name], cfg.recipe)
            for seed in cfg.seeds:
                pk = content_key("protect", dk, prot.name, prot.params, _plugin_version(reg, "protectors", prot.name),
                                 seed, __version__, p_code, *_recipe_key(p_recipe))
                g.protects.setdefault(pk, ProtectJob(pk, dk, prot, seed, _plugins_hash([p_hash]), p_recipe))
                for ratio in cfg.poison_ratios:
                    for ex in cfg.exploiters:
                        if ex.seeds is not None and seed not in ex.seeds:
                            continue
                        ex_versions = [_plugin_version(reg, "exploiters", p.name) for p in ex.parts]
                        ex_hashes = [code.entry("exploiters", p.name) for p in ex.parts]
                        if any(_purifies(reg, p.name) for p in ex.parts):
                            u_code = content_key(p_code, ex_hashes, stage_code["purify"])
                            u_recipe = _recipe_for(reg, "exploiters", [p.name for p in ex.parts], cfg.recipe)
                            uk = content_key("purify", pk, ratio, ex.label, ex.params_json(), ex_versions, seed,
                                             __version__, u_code, *_recipe_key(u_recipe))
                            g.purifies.setdefault(uk, PurifyJob(uk, pk, dk, ex, ratio, "all", seed,
                                                                _plugins_hash(ex_hashes), u_code, u_recipe))
                        else:  # training-level exploiters only: every one shares the unchanged data
                            u_code = content_key(p_code, stage_code["purify"])
                            uk = content_key("purify", pk, ratio, "identity", seed, __version__, u_code)
                            g.purifies.setdefault(uk, PurifyJob(uk, pk, dk, IDENTITY, ratio, "all", seed, "", u_code))
                        for arch in cfg.architectures:
                            if arch.only_protectors and prot.entry_label not in arch.only_protectors:
                                continue
                            if arch.only_exploiters and ex.entry_label not in arch.only_exploiters:
                                continue
                            on = resolved(di, arch)
                            c_code = train_code(u_code, arch, ex_hashes, on)
                            recipe = replace(arch.recipe, amp="on" if on else "off").to_dict()
                            # the exploiter is part of the key: training-level ones share their purify job
                            ck = content_key("train", uk, ex.label, ex.params_json(), ex_versions, arch.name,
                                             recipe, seed, __version__, c_code)
                            g.cells.setdefault(ck, Cell(ck, uk, dk, ds, prot, ex, arch, ratio, "all", seed,
                                                        _plugins_hash(ex_hashes), c_code, on))
        # Partial poisoning: the control trains on the clean part alone; it depends on no protector.
        for ratio in (r for r in cfg.poison_ratios if r < 1):
            for seed in cfg.seeds:
                u_code = content_key(stage_code["purify"])
                uk = content_key("control", dk, ratio, seed, __version__, u_code)
                g.purifies.setdefault(uk, PurifyJob(uk, "", dk, CONTROL_EXPLOITER, ratio, CLEAN_ONLY, seed, "",
                                                    u_code))
                for arch in cfg.architectures:
                    on = resolved(di, arch)
                    c_code = train_code(u_code, arch, [], on)
                    recipe = replace(arch.recipe, amp="on" if on else "off").to_dict()
                    ck = content_key("train", uk, arch.name, recipe, seed, __version__, c_code)
                    g.cells.setdefault(ck, Cell(ck, uk, dk, ds, CONTROL_PROTECTOR, CONTROL_EXPLOITER, arch, ratio,
                                                CLEAN_ONLY, seed, "", c_code, on))
    # Drop stages no cell needs (an architecture filter can leave a purify job unused).
    used_u = {c.purify_key for c in g.cells.values()}
    g.purifies = {k: j for k, j in g.purifies.items() if k in used_u}
    used_p = {j.protect_key for j in g.purifies.values() if j.protect_key}
    g.protects = {k: j for k, j in g.protects.items() if k in used_p}
    return g
