"""Plugin discovery and the name -> object tables every other module looks things up in.

Built-in plugins arrive through the ``arena`` entry-point group like any third-party package, so the
core never imports one by name. Environment switches:

- ``ARENA_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points except those named in ``ARENA_PLUGINS``;
- ``ARENA_PLUGINS=a,b``: load only these entry points (by entry-point name).

Modules that are not installed (a tournament's ``plugins:`` key, ``arena check-plugin --plugins``) load
through :func:`load_extra_plugins`, in the driver and in every worker alike. Every plugin is checked when
it registers: a hook name the arena does not define (``arena_register_protector``, singular) or an
``arena_*`` function without ``@hookimpl`` would otherwise be silently ignored, so it is refused.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import re
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .contracts import Architecture, Exploiter, Protector
from .data import DatasetLoader
from .params import ArenaError

KINDS = ("protectors", "exploiters", "architectures", "datasets")
_ARENA_DIR = str(Path(__file__).resolve().parent) + os.sep
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class RegistryError(ArenaError):
    pass


class _Duplicate(RegistryError):
    """Two plugins claim one name: not one plugin's fault, so never skipped silently."""


class _HookFailed(RegistryError):
    def __init__(self, plugin: str, why: str) -> None:
        super().__init__(f"plugin '{plugin}': {why}")
        self.plugin, self.why = plugin, why


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _spec_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith(f"{hookspecs.PROJECT}_"))


def _unknown_hooks(pm: pluggy.PluginManager) -> list[tuple[str, Any]]:
    """(hook name, plugin) of every implementation of a hook that has no spec."""
    out = []
    for name in list(vars(pm.hook)):
        caller = getattr(pm.hook, name, None)
        if name.startswith("_") or caller is None or caller.has_spec():
            continue
        out += [(name, impl.plugin) for impl in caller.get_hookimpls() if not impl.optionalhook]
    return out


def _unmarked_hooks(plugin: Any, project: str) -> list[str]:
    """``arena_*`` functions a plugin defines itself without the hookimpl marker."""
    home = plugin.__name__ if isinstance(plugin, types.ModuleType) else None
    out = []
    for attr in dir(plugin):
        if not attr.startswith(f"{project}_"):
            continue
        fn = getattr(plugin, attr, None)
        if not callable(fn) or hasattr(fn, f"{project}_impl"):
            continue
        if home is not None and getattr(fn, "__module__", home) != home:
            continue  # imported from elsewhere, not the plugin's own definition
        out.append(attr)
    return sorted(out)


def _where(e: BaseException) -> tuple[str, int] | None:
    """File and line of plugin code that raised: the innermost frame outside the arena and the import
    machinery (for a syntax error, the offending line itself)."""
    if isinstance(e, SyntaxError) and e.filename:
        return e.filename, e.lineno or 0
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "importlib" not in f.filename and not f.filename.startswith(_ARENA_DIR)]
    return (frames[-1].filename, frames[-1].lineno or 0) if frames else None


def _exception_line(e: BaseException, own_file: str = "") -> str:
    """One line for an exception raised by plugin code: where (unless it is ``own_file``), then what."""
    what = e.msg if isinstance(e, SyntaxError) and e.msg else (_first_line(e) if str(e).strip() else "")
    what = f"{type(e).__name__}: {what}" if what else type(e).__name__
    at = _where(e)
    if at is None:
        return what
    if own_file and Path(at[0]).resolve() == Path(own_file).resolve():
        return f"line {at[1]}: {what}"  # the caller names the file
    return f"{at[0]}, line {at[1]}: {what}"


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
        self.skipped: list[str] = []  # one line per entry point that could not be loaded
        if autoload is None:
            autoload = os.environ.get("ARENA_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0", "false")
        if only is None:
            env = os.environ.get("ARENA_PLUGINS", "").strip()
            only = [s.strip() for s in env.split(",") if s.strip()] or None
        self._load_entry_points(autoload, only)
        self.tables: dict[str, dict[str, Entry]] = {}
        self._collect_entry_points()

    def _collect_entry_points(self) -> None:
        """Build the tables; an entry point whose registration hook fails is skipped like one that cannot
        be imported (a name clash between two installed packages stays an error: which one is wrong?)."""
        while True:
            try:
                self._collect()
                return
            except _HookFailed as e:
                src = self.sources.pop(e.plugin, ("?", "?"))[0]
                self.pm.unregister(name=e.plugin)
                self._skip(e.plugin, src, e.why)

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
            dist = ep.dist
            version = dist.version if dist else "?"
            src = f"entry point {dist.name if dist else '?'}=={version}:{ep.name}"
            # One broken third-party package must not take every other plugin (and `arena plugins`,
            # where its author would look first) down with it: it is named in one line and skipped.
            try:
                module = ep.load()
            except Exception as e:
                self._skip(ep.name, src, f"cannot import '{ep.value}': {_exception_line(e)}")
                continue
            try:
                self._register_checked(module, ep.name)
            except RegistryError as e:
                self._skip(ep.name, src, str(e))
                continue
            self.sources[ep.name] = (src, getattr(module, "__version__", version))

    def _skip(self, name: str, source: str, why: str) -> None:
        line = f"plugin '{name}' ({source}) skipped: {why}"
        self.skipped.append(line)
        print(f"warning: {line}", file=sys.stderr)

    def _register_checked(self, plugin: Any, name: str) -> None:
        """Register with pluggy and refuse what pluggy would otherwise ignore or report as a traceback:
        hooks with wrong argument names, unknown ``arena_*`` hooks, ``arena_*`` functions without
        ``@hookimpl``. Nothing stays registered when it is refused."""
        unmarked = _unmarked_hooks(plugin, self.pm.project_name)
        if unmarked:
            raise RegistryError(f"plugin '{name}' defines {unmarked[0]}() without @arena.hookimpl, so the arena "
                                "would never call it; decorate it with @hookimpl")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as e:
            if self.pm.get_plugin(name) is not None:  # pluggy keeps the name of a plugin it refused
                self.pm.unregister(name=name)
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = "; ".join(ln for ln in lines if not ln.startswith("Plugin ")) or _first_line(e)
            raise RegistryError(f"plugin '{name}': {why}") from None
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError:
            bad = sorted(h[0] for h in _unknown_hooks(self.pm) if h[1] is plugin)
            self.pm.unregister(name=name)
            hook = bad[0] if bad else "?"
            raise RegistryError(f"plugin '{name}' implements '{hook}', which is not an arena hook; "
                                f"arena hooks: {', '.join(_spec_names())}") from None

    def register_plugin(self, plugin: Any, name: str | None = None, version: str = "0") -> str:
        """Register a plugin object or module at run time (tests, notebooks) and rebuild the tables."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if self.pm.get_plugin(name) is not None:
            raise RegistryError(f"a plugin named '{name}' is already registered")
        self._register_checked(plugin, name)
        self.sources[name] = ("registered at runtime", getattr(plugin, "__version__", version))
        try:
            self._collect()
        except Exception as e:
            self.pm.unregister(name=name)
            self.sources.pop(name, None)
            self._collect()
            if isinstance(e, _HookFailed):
                raise RegistryError(f"plugin '{name}': {e.why}") from None
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
                try:
                    returned = impl.function(register=reg)
                    for item in returned or []:
                        reg(*item) if isinstance(item, tuple) else reg(item)
                except _Duplicate:
                    raise
                except Exception as e:  # the plugin's own hook failed, or registered something wrong
                    raise _HookFailed(impl.plugin_name, f"arena_register_{kind}: {_exception_line(e)}") from e
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
                raise _Duplicate(
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

    def cell_finished(self, row: dict) -> list[str]:
        """Call every observer with the row; one that raises is skipped, never the tournament's end: the row is
        already written, and a logging plugin's bug must not stop the grid. Returns one line per failure."""
        failures = []
        for impl in self.pm.hook.arena_cell_finished.get_hookimpls():
            try:
                impl.function(row=row)
            except Exception as e:  # noqa: BLE001 - any observer failure is reported and skipped
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                failures.append(f"observer '{impl.plugin_name}' raised {type(e).__name__}: {msg}")
        return failures


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


# -- plugin modules that are not installed ---------------------------------------------------------------
def resolve_plugin(entry: Any, base: Path | str | None = None) -> str:
    """The canonical form of a ``plugins:`` entry, which loads the same module in any process and from any
    working directory: an absolute ``.py`` path, or a module name to import.

    ``entry`` is a ``.py`` path (relative to ``base``, the tournament file's folder) or a module name. A
    module name is looked up as a file or package in ``base`` first (a plugin kept beside the YAML), then
    imported normally from the working directory and the installed packages, the way workers import it."""
    if not isinstance(entry, str) or not entry.strip():
        raise RegistryError(f"plugin entry {entry!r}: expected a module name or a path to a .py file")
    entry = entry.strip()
    base_p = Path(base).resolve() if base is not None else Path.cwd()
    if entry.endswith(".py") or "/" in entry or os.sep in entry:
        path = (base_p / Path(entry).expanduser()).resolve()
        if path.suffix != ".py":
            raise RegistryError(f"plugin '{entry}': expected a .py file or a module name (like my_pkg.plugin)")
        if not path.is_file():
            raise RegistryError(f"plugin '{entry}': no such file {path}")
        return str(path)
    if not _MODULE_NAME.match(entry):
        raise RegistryError(f"plugin '{entry}': not a module name (dotted Python identifiers) or a .py path")
    if base is not None:
        stem = base_p.joinpath(*entry.split("."))
        for cand in (stem.with_suffix(".py"), stem / "__init__.py"):
            if cand.is_file():
                return str(cand)
    return entry


def _module_name_of(path: Path) -> tuple[str, Path]:
    """Dotted module name of a file and the folder to import it from: the file's regular packages (folders
    with ``__init__.py``) above it belong to the name, as pytest's ``prepend`` import mode does."""
    path = path.resolve()
    parts = [] if path.name == "__init__.py" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder


def _import_plugin(entry: str) -> types.ModuleType:
    """Import a canonical entry (see :func:`resolve_plugin`); errors are one line naming file and line."""
    if not entry.endswith(".py"):
        cwd = os.getcwd()
        if "" not in sys.path and cwd not in sys.path:
            sys.path.append(cwd)  # workers have it on PYTHONPATH: the driver finds the same modules
        try:
            return importlib.import_module(entry)
        except ModuleNotFoundError as e:
            if e.name and (entry == e.name or entry.startswith(e.name + ".")):
                raise RegistryError(f"cannot import plugin module '{entry}': no module named '{e.name}' in the "
                                    "tournament file's folder, the working directory or the installed packages"
                                    ) from None
            raise RegistryError(f"cannot import plugin module '{entry}': {_exception_line(e)}") from None
        except Exception as e:
            raise _import_error(f"plugin module '{entry}'", e, _file_of(entry)) from None
    path = Path(entry)
    name, root = _module_name_of(path)
    if not name:
        raise RegistryError(f"plugin file {path}: cannot name its module (a package folder at the root?)")
    have = sys.modules.get(name)
    if have is not None:
        f = getattr(have, "__file__", None)
        if f and Path(f).resolve() == path:
            return have
        raise RegistryError(f"plugin file {path}: its module name '{name}' is already taken by "
                            f"{f or 'a built-in module'}; rename the file")
    if str(root) not in sys.path:
        sys.path.append(str(root))  # so the plugin imports its sibling modules like any module would
    try:
        if "." in name:
            mod = importlib.import_module(name)
            f = getattr(mod, "__file__", None)
            if not f or Path(f).resolve() != path:
                raise RegistryError(f"plugin file {path}: importing it as '{name}' found {f} instead; "
                                    "rename its package")
            return mod
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return mod
    except Exception as e:
        raise _import_error(f"plugin file {path}", e, str(path)) from None


def _import_error(what: str, e: Exception, own_file: str) -> RegistryError:
    line = _exception_line(e, own_file)
    return RegistryError(f"cannot import {what}{', ' if line.startswith('line ') else ': '}{line}")


def _file_of(module: str) -> str:
    f = getattr(sys.modules.get(module), "__file__", None)
    if f:
        return f
    try:
        spec = importlib.util.find_spec(module)
    except Exception:
        return ""
    return spec.origin if spec is not None and spec.origin else ""


def load_extra_plugins(reg: Registry, entries: list[str], base: Path | str | None = None) -> list[str]:
    """Import plugin modules that are not installed as entry points and register each once per registry.

    The driver (``parse_config``, ``arena check-plugin --plugins``) and every tournament worker call this
    with the same canonical entries, so a plugin that loads in one loads in all. Returns the names the
    modules are registered under."""
    names = []
    for entry in entries:
        canonical = resolve_plugin(entry, base)
        mod = _import_plugin(canonical)
        name = mod.__name__
        have = reg.pm.get_plugin(name)
        if have is None:
            reg.register_plugin(mod, name=name)
        elif have is not mod:
            raise RegistryError(f"plugin '{entry}': a different plugin named '{name}' is already registered")
        names.append(name)
    return names
