"""Plugin discovery and the name -> object tables every other module looks things up in.

Built-in plugins arrive through the ``arena`` entry-point group like any third-party package, so the
core never imports one by name. Environment switches:

- ``ARENA_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points except those named in ``ARENA_PLUGINS``;
- ``ARENA_PLUGINS=a,b``: load only these entry points (by entry-point name).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .contracts import Architecture, Exploiter, Protector
from .data import DatasetLoader
from .params import ArenaError

KINDS = ("protectors", "exploiters", "architectures", "datasets")


class RegistryError(ArenaError):
    pass


@dataclass
class Entry:
    name: str
    obj: Any
    plugin: str  # plugin (entry point or registered object) name
    source: str  # where it came from: "entry point <dist>==<ver>:<ep>" or "registered at runtime"


@dataclass
class PluginInfo:
    name: str
    source: str
    version: str
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)


def _unknown(kind: str, name: str, table: dict) -> RegistryError:
    valid = ", ".join(sorted(table)) or "(none registered)"
    return RegistryError(f"unknown {kind[:-1]} '{name}'; valid choices: {valid}")


class Registry:
    """Holds the plugin manager and the tables of registered objects."""

    def __init__(self, autoload: bool | None = None, only: list[str] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.sources: dict[str, tuple[str, str]] = {}  # plugin name -> (source, version)
        if autoload is None:
            autoload = os.environ.get("ARENA_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0", "false")
        if only is None:
            env = os.environ.get("ARENA_PLUGINS", "").strip()
            only = [s.strip() for s in env.split(",") if s.strip()] or None
        self._load_entry_points(autoload, only)
        self.tables: dict[str, dict[str, Entry]] = {}
        self._collect()

    # -- discovery -------------------------------------------------------------------------------
    def _load_entry_points(self, autoload: bool, only: list[str] | None) -> None:
        eps = md.entry_points(group=hookspecs.PROJECT)
        names = {ep.name for ep in eps}
        if only:
            missing = [n for n in only if n not in names]
            if missing:
                raise RegistryError(
                    f"ARENA_PLUGINS names '{missing[0]}', which is not an installed arena entry point; "
                    f"installed: {', '.join(sorted(names)) or '(none)'}")
        for ep in eps:
            if only is not None and ep.name not in only:
                continue
            if only is None and not autoload:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            module = ep.load()
            dist = ep.dist
            version = dist.version if dist else "?"
            src = f"entry point {dist.name if dist else '?'}=={version}:{ep.name}"
            self.pm.register(module, name=ep.name)
            self.sources[ep.name] = (src, getattr(module, "__version__", version))

    def register_plugin(self, plugin: Any, name: str | None = None, version: str = "0") -> str:
        """Register a plugin object or module at run time (tests, notebooks) and rebuild the tables."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if self.pm.get_plugin(name) is not None:
            raise RegistryError(f"a plugin named '{name}' is already registered")
        self.pm.register(plugin, name=name)
        self.sources[name] = ("registered at runtime", getattr(plugin, "__version__", version))
        try:
            self._collect()
        except Exception:
            self.pm.unregister(name=name)
            self.sources.pop(name, None)
            self._collect()
            raise
        return name

    def unregister_plugin(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.sources.pop(name, None)
        self._collect()

    def _collect(self) -> None:
        tables: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self.plugin_registered: dict[str, dict[str, list[str]]] = {}
        for kind in KINDS:
            caller = getattr(self.pm.hook, f"arena_register_{kind}")
            for impl in caller.get_hookimpls():
                reg = self._registrar(kind, impl.plugin_name, tables[kind])
                returned = impl.function(register=reg)
                for item in returned or []:
                    reg(*item) if isinstance(item, tuple) else reg(item)
        self.tables = tables

    def _registrar(self, kind: str, plugin: str, table: dict[str, Entry]) -> Callable[..., None]:
        source = self.sources.get(plugin, ("registered at runtime", "0"))[0]

        def register(obj: Any, builder: Any = None, **meta: Any) -> None:
            if kind in ("protectors", "exploiters"):
                base = Protector if kind == "protectors" else Exploiter
                if not (isinstance(obj, type) and issubclass(obj, base)) or not obj.name:
                    raise RegistryError(f"plugin '{plugin}' registered {obj!r} as a {kind[:-1]}; "
                                        f"expected a named subclass of arena.{base.__name__}")
                name = obj.name
            elif kind == "architectures":
                if isinstance(obj, Architecture):
                    name = obj.name
                else:
                    obj = Architecture(name=obj, build=builder, summary=meta.get("summary", ""), meta=meta)
                    name = obj.name
            else:
                if not isinstance(obj, DatasetLoader):
                    raise RegistryError(f"plugin '{plugin}' registered {obj!r} as a dataset; expected arena.DatasetLoader")
                name = obj.name
            if name in table:
                other = table[name]
                raise RegistryError(
                    f"duplicate {kind[:-1]} name '{name}': registered by plugin '{other.plugin}' "
                    f"({other.source}) and by plugin '{plugin}' ({source})")
            table[name] = Entry(name, obj, plugin, source)
            self.plugin_registered.setdefault(plugin, {}).setdefault(kind, []).append(name)

        return register

    # -- lookup ----------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.tables[kind])

    def entry(self, kind: str, name: str) -> Entry:
        table = self.tables[kind]
        if name not in table:
            raise _unknown(kind, name, table)
        return table[name]

    def protector(self, name: str, params: dict | None = None) -> Protector:
        return self.entry("protectors", name).obj(**(params or {}))

    def exploiter(self, name: str, params: dict | None = None) -> Exploiter:
        return self.entry("exploiters", name).obj(**(params or {}))

    def architecture(self, name: str) -> Architecture:
        return self.entry("architectures", name).obj

    def dataset(self, name: str) -> DatasetLoader:
        return self.entry("datasets", name).obj

    def plugins(self) -> list[PluginInfo]:
        out = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            src, ver = self.sources.get(name, ("registered at runtime", "0"))
            out.append(PluginInfo(name, src, str(ver), hooks, self.plugin_registered.get(name, {})))
        return sorted(out, key=lambda p: p.name)

    def cell_finished(self, row: dict) -> None:
        self.pm.hook.arena_cell_finished(row=row)


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use (workers build their own the same way)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reset_registry() -> None:
    global _REGISTRY
    _REGISTRY = None
