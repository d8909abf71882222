"""Hashes of the code that produces a tournament stage, so that a stage cache never serves stale output.

Plugin ``version`` attributes are a promise nobody keeps (they sat at ``1`` / ``0.1.0`` through many code
changes), so the stage keys of ``arena/tournament/grid.py`` hash the code itself. What invalidates what:

- **A plugin entry** (a protector, exploiter or architecture) hashes the source of the module that
  registered it, the module that defines its class (or builder), the ``__init__`` of every package above
  them, and, transitively, every module of the same top-level package (for a module outside any package:
  every module file in its directory) that they import. The imports are read with :mod:`ast` from the
  files on disk, never by importing, so a driver that imported the old code still hashes the edited file,
  and entry-point plugins and modules loaded through a tournament's ``plugins:`` key are treated alike.
  Names are resolved below the top-level package's directory whatever it is called on disk (the folder
  ``plugins/`` imports as ``arena_plugins``), and relative imports are followed like absolute ones.
  Editing ``plugins/emn_common.py`` therefore changes ``emn-samplewise``, ``emn-classwise``, ``sem`` and
  ``rem``; editing ``plugins/ddpm.py`` changes ``jcdp`` and ``jcdp-uncond``; nothing else moves.
- **The core** a stage runs is the fixed module list :data:`CORE`: protect and purify run the contract
  checks, budgets and metrics, and hand plugins a Context whose trainer and model builder surrogates use;
  train runs the victim trainer and its augmentation; all three read data through ``arena.data`` and
  the worker's stage code (``_mixed`` builds partially poisoned sets). Editing ``arena/leaderboard.py``,
  the CLI or the board moves no key.
- **Code is hashed as its AST with docstrings removed**: a comment, a docstring or a reformatting changes
  no key; any change to what runs does.

``grid.expand`` adds the torch version, the device kind of the stage's own resources (``cpu`` or
``cuda:<device name>``, from ``resources.<stage>`` when set) and, for train stages, the resolved
precision to every key; a cell's row records one hash of all of it
(``code_hash``). Plugins' own caches (``ctx.cache_path``) live in a directory named by the plugin's code
hash (see ``arena/tournament/worker.py``), so they go stale together with the stage outputs.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch

from .params import ArenaError

_ARENA = Path(__file__).resolve().parent

#: The arena modules (paths under ``arena/``) whose code each stage runs. protect and purify include the
#: trainer, augmentation and models because ``ctx.train`` / ``ctx.build_model`` put them in plugins' hands.
CORE: dict[str, tuple[str, ...]] = {
    "protect": ("stages", "budget", "data", "metrics", "context", "contracts", "params", "trainer", "augment",
                "models", "tournament/worker"),
    "purify": ("stages", "budget", "data", "metrics", "context", "contracts", "params", "trainer", "augment",
               "models", "tournament/worker"),
    "train": ("stages", "trainer", "augment", "data", "models", "context", "contracts", "params",
              "tournament/worker"),
}


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip


def source_digest(path: Path) -> str:
    """Digest of what a Python file does: its AST without docstrings (comments never reach the AST)."""
    raw = Path(path).read_bytes()
    try:
        tree = _StripDocstrings().visit(ast.parse(raw, filename=str(path)))
        blob = ast.dump(tree, annotate_fields=False, include_attributes=False).encode()
    except (SyntaxError, ValueError):  # not parseable: the bytes are all we have
        blob = raw
    return hashlib.sha256(blob).hexdigest()


def _digest_parts(parts: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, digest in sorted(parts):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()[:16]


def _module_file(module: str) -> Path:
    mod = sys.modules.get(module)
    f = getattr(mod, "__file__", None)
    if not f:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        f = spec.origin if spec is not None and spec.has_location else None
    if not f or not str(f).endswith(".py"):
        raise ArenaError(f"cannot hash plugin module '{module}': no Python source file found")
    return Path(f).resolve()


def _resolve(top_dir: Path, dotted: str) -> Path | None:
    """The file of ``dotted`` inside the top-level package whose directory is ``top_dir``, by the dotted
    path below the top: the directory may be named otherwise (the folder ``plugins/`` is ``arena_plugins``)."""
    rest = dotted.split(".")[1:]
    if not rest:
        return top_dir / "__init__.py" if (top_dir / "__init__.py").is_file() else None
    base = top_dir.joinpath(*rest)
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def module_files(module: str, file: Path | None = None) -> dict[str, Path]:
    """The files a module's behaviour depends on inside its own package: itself, the ``__init__`` of the
    packages above it, and (transitively) the modules of the same top-level package it imports. A module
    outside any package counts the module files of its own directory instead. Found with ast, no import."""
    file = Path(file).resolve() if file is not None else _module_file(module)
    parts = module.split(".")
    is_pkg = file.name == "__init__.py"
    top = parts[0]
    packaged = len(parts) > 1 or is_pkg
    # the top-level package's directory (or, for a lone module, its own directory), found from the file
    # and the dotted name, never from the directory's name
    root = file.parents[len(parts) - (1 if is_pkg else 2)] if packaged else file.parent
    found: dict[str, Path] = {}
    todo: list[tuple[str, Path]] = [(module, file)]
    while todo:
        name, path = todo.pop()
        if name in found:
            continue
        found[name] = path
        nparts = name.split(".")
        pkg_of = nparts if path.name == "__init__.py" else nparts[:-1]
        wanted = [".".join(nparts[:i]) for i in range(1, len(nparts))]  # packages above it run first
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            tree = ast.Module(body=[], type_ignores=[])
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    if node.level - 1 > len(pkg_of):
                        continue
                    base_parts = pkg_of[: len(pkg_of) - (node.level - 1)]
                    base = ".".join(base_parts + (node.module.split(".") if node.module else []))
                else:
                    base = node.module or ""
                if base:
                    wanted.append(base)
                wanted += [f"{base}.{a.name}" if base else a.name for a in node.names if a.name != "*"]
        for dotted in wanted:
            if packaged:
                if dotted.split(".")[0] != top:
                    continue
                hit = _resolve(root, dotted)
            else:  # a lone module: only plain modules beside it
                hit = root / f"{dotted}.py" if "." not in dotted and (root / f"{dotted}.py").is_file() else None
            if hit is not None and dotted not in found:
                todo.append((dotted, hit.resolve()))
    return found


def module_hash(module: str, file: Path | None = None) -> str:
    """Hash of a module and the sibling modules it imports (see :func:`module_files`)."""
    files = module_files(module, file)
    return _digest_parts([(name, source_digest(p)) for name, p in files.items()])


def core_hash(stage: str) -> str:
    """Hash of the arena modules a stage runs (:data:`CORE`)."""
    return _digest_parts([(m, source_digest(_ARENA / f"{m}.py")) for m in CORE[stage]])


def entry_modules(reg: Any, kind: str, name: str) -> list[str]:
    """The modules that make up a registered entry: the plugin that registered it and the one defining it."""
    e = reg.entry(kind, name)
    mods = []
    plugin = reg.pm.get_plugin(e.plugin)
    if isinstance(plugin, types.ModuleType):
        pmod = plugin.__name__
    else:  # a class or an instance registered at run time: the module that defines it
        pmod = plugin.__module__ if isinstance(plugin, type) else type(plugin).__module__
    if pmod == "builtins":
        pmod = None
    if pmod:
        mods.append(pmod)
    defining = e.obj.build if kind == "architectures" else e.obj
    dmod = getattr(defining, "__module__", None)
    if dmod and dmod not in mods:
        mods.append(dmod)
    return mods


class CodeHasher:
    """Memoizes file digests for one grid expansion; build a new one per expansion so an edit between two
    runs in one process is seen."""

    def __init__(self, reg: Any) -> None:
        self.reg = reg
        self._mods: dict[str, str] = {}
        self._core: dict[str, str] = {}

    def module(self, module: str) -> str:
        if module not in self._mods:
            self._mods[module] = module_hash(module)
        return self._mods[module]

    def entry(self, kind: str, name: str) -> str:
        """Hash of everything an entry's code depends on in its own package(s)."""
        return _digest_parts([(m, self.module(m)) for m in entry_modules(self.reg, kind, name)])

    def core(self, stage: str) -> str:
        if stage not in self._core:
            self._core[stage] = core_hash(stage)
        return self._core[stage]

    def architectures(self) -> str:
        """All architecture plugins: surrogates may build any of them through ``ctx.build_model``."""
        return _digest_parts([(n, self.entry("architectures", n)) for n in self.reg.names("architectures")])


def device_kind(gpus_per_trial: float) -> str:
    """``cpu``, or ``cuda:<device name>`` as the driver sees it (``cuda`` when the driver has none)."""
    if gpus_per_trial <= 0:
        return "cpu"
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cuda"


def torch_version() -> str:
    return torch.__version__
