"""Expand a tournament into a DAG of stages keyed by content.

protect(data, protector, seed) runs once per data set, not once per cell; purify(protected, ratio,
exploiter, seed) once per protected set and data-level exploiter (training-level exploiters share one
pass-through job); train(purified, architecture, recipe, seed) once per cell.
Every key hashes what determines the output (data fingerprint, plugin name, params, plugin version,
seed, arena version), so equal work is shared across cells and across reruns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..registry import Registry
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


@dataclass(frozen=True)
class PurifyJob:
    key: str
    protect_key: str
    data_key: str
    exploiter: ExploiterSpec
    poison_ratio: float
    subset: str  # "all" or "clean-only" (the partial-poisoning control)
    seed: int


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

    def label(self) -> str:
        extra = f" r={self.poison_ratio:g}" if self.poison_ratio < 1 else ""
        if self.subset == CLEAN_ONLY:
            return f"{CONTROL_LABEL} / {self.arch.entry_label} s{self.seed}{extra}"
        return (f"{self.protector.entry_label} x {self.exploiter.entry_label} / {self.arch.entry_label} "
                f"s{self.seed}{extra}")


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


def expand(cfg: TournamentConfig, data_keys: dict[int, str], reg: Registry) -> Grid:
    """``data_keys[i]`` is the content fingerprint of ``cfg.datasets[i]``'s splits."""
    g = Grid()
    for di, ds in enumerate(cfg.datasets):
        dk = data_keys[di]
        for prot in cfg.protectors:
            for seed in cfg.seeds:
                pk = content_key("protect", dk, prot.name, prot.params, _plugin_version(reg, "protectors", prot.name),
                                 seed, __version__)
                g.protects.setdefault(pk, ProtectJob(pk, dk, prot, seed))
                for ratio in cfg.poison_ratios:
                    for ex in cfg.exploiters:
                        if ex.seeds is not None and seed not in ex.seeds:
                            continue
                        ex_versions = [_plugin_version(reg, "exploiters", p.name) for p in ex.parts]
                        if any(_purifies(reg, p.name) for p in ex.parts):
                            uk = content_key("purify", pk, ratio, ex.label, ex.params_json(), ex_versions, seed,
                                             __version__)
                            g.purifies.setdefault(uk, PurifyJob(uk, pk, dk, ex, ratio, "all", seed))
                        else:  # training-level exploiters only: every one shares the unchanged data
                            uk = content_key("purify", pk, ratio, "identity", seed, __version__)
                            g.purifies.setdefault(uk, PurifyJob(uk, pk, dk, IDENTITY, ratio, "all", seed))
                        for arch in cfg.architectures:
                            if arch.only_protectors and prot.entry_label not in arch.only_protectors:
                                continue
                            if arch.only_exploiters and ex.entry_label not in arch.only_exploiters:
                                continue
                            # the exploiter is part of the key: training-level ones share their purify job
                            ck = content_key("train", uk, ex.label, ex.params_json(), ex_versions, arch.name,
                                             arch.recipe.to_dict(), seed, __version__)
                            g.cells.setdefault(ck, Cell(ck, uk, dk, ds, prot, ex, arch, ratio, "all", seed))
        # Partial poisoning: the control trains on the clean part alone; it depends on no protector.
        for ratio in (r for r in cfg.poison_ratios if r < 1):
            for seed in cfg.seeds:
                uk = content_key("control", dk, ratio, seed, __version__)
                g.purifies.setdefault(uk, PurifyJob(uk, "", dk, CONTROL_EXPLOITER, ratio, CLEAN_ONLY, seed))
                for arch in cfg.architectures:
                    ck = content_key("train", uk, arch.name, arch.recipe.to_dict(), seed, __version__)
                    g.cells.setdefault(ck, Cell(ck, uk, dk, ds, CONTROL_PROTECTOR, CONTROL_EXPLOITER, arch, ratio,
                                                CLEAN_ONLY, seed))
    # Drop stages no cell needs (an architecture filter can leave a purify job unused).
    used_u = {c.purify_key for c in g.cells.values()}
    g.purifies = {k: j for k, j in g.purifies.items() if k in used_u}
    used_p = {j.protect_key for j in g.purifies.values() if j.protect_key}
    g.protects = {k: j for k, j in g.protects.items() if k in used_p}
    return g
