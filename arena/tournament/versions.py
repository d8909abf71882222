"""What code a process runs: the arena package, the built-in ``arena_plugins`` and each ``plugins:``
module, by source hash.

A worker whose code differs from the driver's would compute stages under keys the driver derived from
other code; Ray's ``runtime_env`` ships the driver's code to the workers, and each actor reports these
hashes on start so that a node where shipping did not take (an old installed arena shadowing it) is one
clear error instead of quietly wrong rows."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import arena


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _module_file(entry: str) -> Path | None:
    if entry.endswith(".py"):
        return Path(entry)
    try:
        spec = importlib.util.find_spec(entry)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _builtins_hash() -> str | None:
    """The built-in plugins' tree, found without importing them (None when they are not installed); by
    relative paths, so the renamed copy Ray ships (``runner._under_own_name``) hashes the same."""
    try:
        spec = importlib.util.find_spec("arena_plugins")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return _tree_hash(Path(next(iter(spec.submodule_search_locations))))


def code_versions(plugin_modules: list[str]) -> dict[str, Any]:
    """``{"arena": "<version>+<hash>", "builtins": hash or None, "plugins": {entry: hash or None}}`` of the
    code this process imports."""
    plugins = {}
    for entry in plugin_modules:
        f = _module_file(entry)
        plugins[entry] = hashlib.sha256(f.read_bytes()).hexdigest()[:12] if f is not None and f.is_file() else None
    return {"arena": f"{arena.__version__}+{_tree_hash(Path(arena.__file__).parent)}", "builtins": _builtins_hash(),
            "plugins": plugins}


def mismatch(driver: dict[str, Any], worker: dict[str, Any]) -> str | None:
    """One line naming the first difference, or None."""
    if driver["arena"] != worker.get("arena"):
        return f"arena {worker.get('arena')} on the worker, {driver['arena']} on the driver"
    if driver.get("builtins") != worker.get("builtins"):
        return (f"built-in plugins (arena_plugins) {worker.get('builtins') or 'missing'} on the worker, "
                f"{driver.get('builtins') or 'missing'} on the driver")
    for entry, h in driver["plugins"].items():
        if worker.get("plugins", {}).get(entry) != h:
            return f"plugin {entry}: {worker.get('plugins', {}).get(entry) or 'missing'} on the worker, {h} on the driver"
    return None
