"""Tournament YAML: parsed and validated completely before anything runs.

Every problem is one line naming the file, the key path, the value and what is accepted, so a typo
costs seconds, not the hour a grid would have run before tripping over it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..data import resolve_root
from ..labels import distinguishing_labels
from ..params import ArenaError, show
from ..registry import Registry, get_registry, load_extra_plugins, resolve_plugin
from ..trainer import Recipe


class ConfigError(ArenaError):
    pass


CONTROL_LABEL = "(clean part only)"  # exploiter column of the partial-poisoning control rows


TOP_KEYS = {
    "name": "tournament name (str)",
    "description": "free text",
    "datasets": "list of data sets",
    "protectors": "list of protectors",
    "exploiters": "list of exploiters",
    "architectures": "list of architectures",
    "recipe": "victim training recipe",
    "poison_ratios": "list of floats in (0, 1]",
    "seeds": "list of ints",
    "resources": "cpus_per_trial, gpus_per_trial, max_concurrent, retries, timeout_s, ready_timeout_s, "
                 "and per stage {protect, purify, train}: {cpus_per_trial, gpus_per_trial}",
    "output": "output directory",
    "storage": "where stage outputs, splits and rows live: an absolute path or a URI (s3://, gs://, hdfs://)",
    "plugins": "extra plugin modules to load (module names or .py paths relative to this file)",
    "split_seed": "seed of the train/raw/test split (int)",
}
DATASET_KEYS = ("name", "params", "root", "download", "train", "test", "raw_fraction")
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial", "max_concurrent", "retries", "timeout_s", "ready_timeout_s",
                 "protect", "purify", "train")
STAGES = ("protect", "purify", "train")
STAGE_RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial")
# How long a new stage actor may wait for a node with room before the run stops with a line naming the
# resource: long enough for an autoscaler to add a node, short enough that a typo is not an afternoon.
DEFAULT_READY_TIMEOUT_S = 600.0
# Longest a stage may run before its actor is replaced and its cells recorded as failed: far above what a
# real stage takes on one CPU core at CIFAR size (EMN/SEM protect, a DDPM purify, 60-epoch ResNet-18 training),
# so only a hung plugin reaches it. ``resources.timeout_s`` sets one number for all stages or a mapping.
DEFAULT_TIMEOUT_S = {"protect": 24 * 3600.0, "purify": 24 * 3600.0, "train": 12 * 3600.0}


@dataclass(frozen=True)
class PluginSpec:
    """``entry_label`` is the entry's identity on the board (see :mod:`arena.labels`); it takes no part in
    equality or cache keys, so naming an entry never recomputes it."""

    name: str
    params: dict[str, Any]
    entry_label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.entry_label:
            object.__setattr__(self, "entry_label", self.name)

    def as_json(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)


@dataclass(frozen=True)
class ExploiterSpec:
    """One exploiter column: a single exploiter or a composition applied together."""

    parts: tuple[PluginSpec, ...]
    entry_label: str = field(default="", compare=False)
    # The seeds this entry runs on, a subset of the tournament's (None: all). A cheap grid can give its
    # headline exploiters every seed and the rest one, so each claim it makes still has an interval.
    seeds: tuple[int, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.entry_label:
            object.__setattr__(self, "entry_label", self.label)

    @property
    def label(self) -> str:
        return "+".join(p.name for p in self.parts) if self.parts else CONTROL_LABEL

    def label_params(self) -> Any:
        """The params that tell two entries of this composition apart (by part name when composed)."""
        if len(self.parts) == 1:
            return self.parts[0].params
        return {p.name: p.params for p in self.parts}

    def params_json(self) -> str:
        if len(self.parts) == 1:
            return self.parts[0].as_json()
        return json.dumps([{"name": p.name, "params": p.params} for p in self.parts], sort_keys=True, default=str)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    params: dict[str, Any]
    root: str | None
    download: bool
    train: int | None
    test: int | None
    raw_fraction: float

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return self.name + (f"[{extra}]" if extra else "")


@dataclass(frozen=True)
class ArchSpec:
    name: str
    recipe: Recipe
    only_protectors: tuple[str, ...] | None = None  # entry labels
    only_exploiters: tuple[str, ...] | None = None
    entry_label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.entry_label:
            object.__setattr__(self, "entry_label", self.name)


@dataclass
class TournamentConfig:
    name: str
    path: Path
    datasets: list[DatasetSpec]
    protectors: list[PluginSpec]
    exploiters: list[ExploiterSpec]
    architectures: list[ArchSpec]
    recipe: Recipe
    poison_ratios: list[float]
    seeds: list[int]
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    retries: int
    output: Path
    plugin_modules: list[str] = field(default_factory=list)
    split_seed: int = 0
    raw: dict[str, Any] = field(default_factory=dict)
    timeout_s: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUT_S))
    # (cpus, gpus) of one actor of each stage: a protect or DDPM purify stage may take a whole GPU while
    # training cells take fractions. Stages left out use cpus_per_trial / gpus_per_trial.
    stage_resources: dict[str, tuple[float, float]] = field(default_factory=dict)
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    storage: str | None = None  # a URI or absolute path; None: the output directory

    @property
    def rows_at(self) -> str:
        """Where rows and stage outputs go (arena/storage.py): ``storage``, else the output directory."""
        return self.storage or str(self.output)

    def resources_of(self, stage: str) -> tuple[float, float]:
        return self.stage_resources.get(stage, (self.cpus_per_trial, self.gpus_per_trial))

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()[:12]


class _V:
    """Validation helpers that know the file name for their messages."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, key: str, value: Any, accepted: str) -> ConfigError:
        try:
            shown = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
        except (TypeError, ValueError):  # keys JSON cannot hold (dates, None), ints past the digit limit
            shown = show(value, 80)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        # a key may be any YAML scalar, with newlines and all: the message stays on one line
        key = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(key))
        return ConfigError(f"{self.path}: {key} = {shown}: expected {accepted}")

    def mapping(self, v: Any, key: str) -> dict:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.err(key, v, "a mapping")
        return v

    def seq(self, v: Any, key: str, allow_empty: bool = False) -> list:
        if v is None:
            v = []
        if not isinstance(v, list) or (not v and not allow_empty):
            raise self.err(key, v, "a non-empty list")
        return v

    def keys(self, d: dict, allowed: Any, key: str) -> None:
        for k in d:
            if k not in allowed:
                raise self.err(f"{key}.{k}" if key else str(k), d[k], f"a known key; valid keys: {', '.join(allowed)}")


def _plugin_spec(v: _V, item: Any, key: str, kind: str, reg: Registry) -> PluginSpec:
    if isinstance(item, str):
        name, params = item, {}
    elif isinstance(item, dict):
        v.keys(item, ("name", "params", "label", "seeds") if kind == "exploiters" else ("name", "params", "label"), key)
        name, params = item.get("name"), v.mapping(item.get("params"), f"{key}.params")
    else:
        raise v.err(key, item, f"a {kind[:-1]} name or {{name, params}}")
    table = reg.tables[kind]
    if name not in table:
        raise v.err(f"{key}.name" if isinstance(item, dict) else key, name,
                    f"a registered {kind[:-1]}; valid choices: {', '.join(sorted(table))}")
    try:
        validated = table[name].obj.params.validate(params, owner=f"{kind[:-1]} '{name}'")
    except ArenaError as e:
        raise ConfigError(f"{v.path}: {key}: {e}") from None
    return PluginSpec(name, validated)


def _exploiter_spec(v: _V, item: Any, key: str, reg: Registry) -> ExploiterSpec:
    if isinstance(item, dict) and "combine" in item:
        v.keys(item, ("combine", "label", "seeds"), key)
        parts = tuple(_plugin_spec(v, p, f"{key}.combine[{i}]", "exploiters", reg)
                      for i, p in enumerate(v.seq(item["combine"], f"{key}.combine")))
        names = [p.name for p in parts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise v.err(f"{key}.combine", names, f"distinct exploiters ('{twice[0]}' appears twice)")
        lone = [p.name for p in parts if not reg.tables["exploiters"][p.name].obj.composable]
        if len(parts) > 1 and lone:
            raise v.err(f"{key}.combine", [p.name for p in parts], f"composable exploiters ('{lone[0]}' must run alone)")
        return ExploiterSpec(parts)
    return ExploiterSpec((_plugin_spec(v, item, key, "exploiters", reg),))


def _recipe(v: _V, d: Any, key: str, base: dict | None = None) -> Recipe:
    d = v.mapping(d, key)
    try:
        return Recipe.from_dict({**(base or {}), **d}, owner=key)
    except ArenaError as e:
        raise ConfigError(f"{v.path}: {e}") from None


def _num(v: _V, x: Any, key: str, typ: type, low: float | None = None, high: float | None = None,
         low_open: bool = False) -> Any:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and (typ is float or isinstance(x, int))
    ok = ok and math.isfinite(x)  # NaN compares false with every bound, so it would pass them all
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x <= high
    if not ok:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        raise v.err(key, x, f"{typ.__name__} {' and '.join(s for s in (lo, hi) if s)}".strip())
    return typ(x)


def _labels(v: _V, kind: str, items: list, names: list[str], params: list[Any]) -> list[str]:
    """Each entry's label: its own ``label:`` or one from :func:`distinguishing_labels`; one label names
    one entry (an architecture's identity is its name and recipe, so two equal ones share a label)."""
    auto = distinguishing_labels(names, params)
    identity = [n + json.dumps(p, sort_keys=True, default=str) for n, p in zip(names, params)]
    labels = []
    for i, item in enumerate(items):
        lab = item.get("label") if isinstance(item, dict) else None
        if isinstance(item, dict) and "label" in item and (not isinstance(lab, str) or not lab.strip()):
            raise v.err(f"{kind}[{i}].label", lab, "a non-empty string")
        labels.append(lab.strip() if lab else auto[i])
    owner: dict[str, int] = {}
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        j = owner.setdefault(lab, i)
        if identity[j] != identity[i]:
            raise v.err(f"{kind}[{i}].label" if isinstance(items[i], dict) and "label" in items[i] else f"{kind}[{i}]",
                        lab, f"a label no other entry of {kind} has ({kind}[{j}] is labelled {lab!r} too)")
        k = seen.setdefault(identity[i], i)
        if labels[k] != lab:
            raise v.err(f"{kind}[{i}].label", lab, f"the label of the equal entry {kind}[{k}] ({labels[k]!r})")
    return labels


def _storage(v: _V, raw: Any, path: Path, flag: str | None) -> str | None:
    """The storage URI or absolute path; a relative path resolves like ``output`` (the file's folder for
    the YAML key, the working directory for ``--storage``)."""
    value = flag if flag is not None else raw
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise v.err("--storage" if flag is not None else "storage", value,
                    "an absolute path or a URI pyarrow.fs opens (s3://bucket/dir, gs://, hdfs://)")
    value = value.strip()
    if "://" in value:
        return value
    return str((Path(value) if flag is not None or Path(value).is_absolute() else path.parent / value).resolve())


def parse_config(raw: Any, path: Path, reg: Registry | None = None, output: str | None = None,
                 storage: str | None = None) -> TournamentConfig:
    v = _V(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of keys ({', '.join(TOP_KEYS)})")
    v.keys(raw, list(TOP_KEYS), "")
    if reg is None:
        reg = get_registry()
    # Entries become absolute paths or module names here, so workers (any working directory) load the
    # very modules the driver validated the rest of the file against.
    plugin_modules = []
    for i, m in enumerate(v.seq(raw.get("plugins"), "plugins", allow_empty=True)):
        if not isinstance(m, str) or not m.strip():
            raise v.err(f"plugins[{i}]", m, "a module name or a .py path relative to the tournament file")
        try:
            entry = resolve_plugin(m, path.parent)
            load_extra_plugins(reg, [entry])
        except ArenaError as e:
            raise ConfigError(f"{path}: plugins[{i}]: {e}") from None
        plugin_modules.append(entry)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise v.err("name", name, "a non-empty string")

    datasets = []
    for i, d in enumerate(v.seq(raw.get("datasets"), "datasets")):
        key = f"datasets[{i}]"
        if isinstance(d, str):
            d = {"name": d}
        d = v.mapping(d, key)
        v.keys(d, DATASET_KEYS, key)
        dname = d.get("name")
        if dname not in reg.tables["datasets"]:
            raise v.err(f"{key}.name", dname, f"a registered data set; valid choices: {', '.join(reg.names('datasets'))}")
        loader = reg.dataset(dname)
        try:
            dparams = loader.params.validate(v.mapping(d.get("params"), f"{key}.params"), owner=f"dataset '{dname}'")
        except ArenaError as e:
            raise ConfigError(f"{path}: {key}.params: {e}") from None
        root = d.get("root")
        if root is not None and not isinstance(root, str):
            raise v.err(f"{key}.root", root, "a path string")
        download = d.get("download", False)
        if not isinstance(download, bool):
            raise v.err(f"{key}.download", download, "true or false")
        if loader.needs_root and not download:
            resolved = resolve_root(root, dname)
            if resolved is None:
                raise v.err(f"{key}.root", root, f"a data root for '{dname}' (set root, pass --data-root or ARENA_DATA)")
            if not resolved.exists():
                raise v.err(f"{key}.root", str(resolved), "an existing directory")
        train = d.get("train")
        test = d.get("test")
        datasets.append(DatasetSpec(
            dname, dparams, root, download,
            None if train is None else _num(v, train, f"{key}.train", int, 1),
            None if test is None else _num(v, test, f"{key}.test", int, 1),
            _num(v, d.get("raw_fraction", 0.1), f"{key}.raw_fraction", float, 0.0, 0.95),
        ))

    raw_p = v.seq(raw.get("protectors"), "protectors")
    raw_e = v.seq(raw.get("exploiters", ["none"]), "exploiters")
    protectors = [_plugin_spec(v, p, f"protectors[{i}]", "protectors", reg) for i, p in enumerate(raw_p)]
    exploiters = [_exploiter_spec(v, e, f"exploiters[{i}]", reg) for i, e in enumerate(raw_e)]
    for kind, items in (("protectors", [p.name + p.as_json() for p in protectors]),
                        ("exploiters", [e.label + e.params_json() for e in exploiters])):
        if len(set(items)) != len(items):
            dup = next(x for x in items if items.count(x) > 1)
            raise v.err(kind, dup, "each entry at most once")
    plabels = _labels(v, "protectors", raw_p, [p.name for p in protectors], [p.params for p in protectors])
    protectors = [replace(p, entry_label=lab) for p, lab in zip(protectors, plabels)]
    elabels = _labels(v, "exploiters", raw_e, [e.label for e in exploiters], [e.label_params() for e in exploiters])
    exploiters = [replace(e, entry_label=lab) for e, lab in zip(exploiters, elabels)]

    base_recipe = v.mapping(raw.get("recipe"), "recipe")
    recipe = _recipe(v, base_recipe, "recipe")
    archs = []
    raw_a = v.seq(raw.get("architectures", ["resnet18"]), "architectures")
    for i, a in enumerate(raw_a):
        key = f"architectures[{i}]"
        if isinstance(a, str):
            a = {"name": a}
        a = v.mapping(a, key)
        v.keys(a, ("name", "recipe", "protectors", "exploiters", "label"), key)
        an = a.get("name")
        if an not in reg.tables["architectures"]:
            raise v.err(f"{key}.name", an, f"a registered architecture; valid choices: {', '.join(reg.names('architectures'))}")
        only_p = a.get("protectors")
        only_e = a.get("exploiters")
        # A filter names entries by label; a bare name selects every entry of that name.
        names_p = [(p.entry_label, p.name) for p in protectors]
        names_e = [(e.entry_label, e.label) for e in exploiters]
        chosen: dict[str, tuple[str, ...] | None] = {"protectors": None, "exploiters": None}
        for sel, entries, k in ((only_p, names_p, "protectors"), (only_e, names_e, "exploiters")):
            if sel is None:
                continue
            picked: list[str] = []
            for j, s in enumerate(v.seq(sel, f"{key}.{k}")):
                hits = [lab for lab, n in entries if s == lab] or [lab for lab, n in entries if s == n]
                if not hits:
                    labels = sorted({lab for lab, _ in entries} | {n for _, n in entries})
                    raise v.err(f"{key}.{k}[{j}]", s, f"one of this tournament's {k}: {', '.join(labels)}")
                picked += [h for h in hits if h not in picked]
            chosen[k] = tuple(picked)
        archs.append(ArchSpec(an, _recipe(v, a.get("recipe"), f"{key}.recipe", base_recipe),
                              chosen["protectors"], chosen["exploiters"]))
    alabels = _labels(v, "architectures", raw_a, [a.name for a in archs], [a.recipe.to_dict() for a in archs])
    archs = [replace(a, entry_label=lab) for a, lab in zip(archs, alabels)]

    ratios = [_num(v, r, f"poison_ratios[{i}]", float, 0.0, 1.0, low_open=True)
              for i, r in enumerate(v.seq(raw.get("poison_ratios", [1.0]), "poison_ratios"))]
    seeds = [_num(v, s, f"seeds[{i}]", int, 0) for i, s in enumerate(v.seq(raw.get("seeds", [0]), "seeds"))]
    for i, item in enumerate(raw_e):
        if isinstance(item, dict) and "seeds" in item:
            own = [_num(v, s, f"exploiters[{i}].seeds[{j}]", int, 0)
                   for j, s in enumerate(v.seq(item["seeds"], f"exploiters[{i}].seeds"))]
            for j, s in enumerate(own):
                if s not in seeds:
                    raise v.err(f"exploiters[{i}].seeds[{j}]", s, f"one of the tournament's seeds: {seeds}")
            exploiters[i] = replace(exploiters[i], seeds=tuple(dict.fromkeys(own)))
    res = v.mapping(raw.get("resources"), "resources")
    v.keys(res, RESOURCE_KEYS, "resources")
    cpus = _num(v, res.get("cpus_per_trial", 1), "resources.cpus_per_trial", float, 0.0, low_open=True)
    gpus = _num(v, res.get("gpus_per_trial", 0), "resources.gpus_per_trial", float, 0.0)
    maxc = res.get("max_concurrent")
    maxc = None if maxc is None else _num(v, maxc, "resources.max_concurrent", int, 1)
    retries = _num(v, res.get("retries", 2), "resources.retries", int, 0)
    tmo = res.get("timeout_s")
    timeout_s = dict(DEFAULT_TIMEOUT_S)
    if isinstance(tmo, dict):
        v.keys(tmo, tuple(DEFAULT_TIMEOUT_S), "resources.timeout_s")
        timeout_s.update({k: _num(v, x, f"resources.timeout_s.{k}", float, 0.0, low_open=True) for k, x in tmo.items()})
    elif tmo is not None:
        timeout_s = dict.fromkeys(DEFAULT_TIMEOUT_S, _num(v, tmo, "resources.timeout_s", float, 0.0, low_open=True))
    stage_res = {}
    for st in STAGES:
        if st not in res:
            continue
        sr = v.mapping(res[st], f"resources.{st}")
        v.keys(sr, STAGE_RESOURCE_KEYS, f"resources.{st}")
        stage_res[st] = (_num(v, sr.get("cpus_per_trial", cpus), f"resources.{st}.cpus_per_trial", float, 0.0,
                              low_open=True),
                         _num(v, sr.get("gpus_per_trial", gpus), f"resources.{st}.gpus_per_trial", float, 0.0))
    ready_timeout = _num(v, res.get("ready_timeout_s", DEFAULT_READY_TIMEOUT_S), "resources.ready_timeout_s", float,
                         0.0, low_open=True)
    out = output or raw.get("output") or f"runs/{name}"
    if not isinstance(out, str):
        raise v.err("output", out, "a directory path")
    # The file's own output resolves against the file's folder, so the same command from another working
    # directory finds the same rows (a --output flag is the user's path, relative to where they typed it).
    out_path = (Path(out) if output or Path(out).is_absolute() else path.parent / out).resolve()
    if out_path.exists() and not out_path.is_dir():
        raise ConfigError(f"{path}: {'--output' if output else 'output'} = '{out}': expected a directory, "
                          f"found a file ({out_path})")
    split_seed = _num(v, raw.get("split_seed", 0), "split_seed", int, 0)
    return TournamentConfig(name, path, datasets, protectors, exploiters, archs, recipe, ratios, seeds, cpus, gpus,
                            maxc, retries, out_path, plugin_modules, split_seed, raw, timeout_s, stage_res,
                            ready_timeout, _storage(v, raw.get("storage"), path, storage))


def load_config(path: str | Path, output: str | None = None, reg: Registry | None = None,
                storage: str | None = None) -> TournamentConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such tournament file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML ({problem})") from None
    return parse_config(raw, path, reg, output, storage)
