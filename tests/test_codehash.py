"""Stage keys follow the code: an edited plugin recomputes its own stages and nothing else (real files,
real Ray, real stage cache)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from arena.codehash import CORE, core_hash, module_files, module_hash
from arena.leaderboard import read_rows
from arena.tournament.config import load_config
from arena.tournament.runner import run_tournament

ROOT = Path(__file__).resolve().parents[1]

# Ray tests run one after another on one xdist worker (see tests/conftest.py): one embedded Ray at a time.
pytestmark = pytest.mark.xdist_group("ray")


def _pkg(root: Path) -> Path:
    pkg = root / "pkgx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plug.py").write_text("from . import helper\n\n\ndef go():\n    from pkgx.other import f\n"
                                 "    return helper.g() + f()\n")
    (pkg / "helper.py").write_text("def g():\n    return 1\n")
    (pkg / "other.py").write_text("def f():\n    return 2\n")
    (pkg / "unrelated.py").write_text("X = 1\n")
    return pkg / "plug.py"


def test_plugin_hash_follows_the_sibling_modules_it_imports(tmp_path: Path) -> None:
    plug = _pkg(tmp_path)
    assert set(module_files("pkgx.plug", plug)) == {"pkgx", "pkgx.plug", "pkgx.helper", "pkgx.other"}
    h0 = module_hash("pkgx.plug", plug)
    (tmp_path / "pkgx" / "unrelated.py").write_text("X = 2\n")
    assert module_hash("pkgx.plug", plug) == h0, "a module the plugin does not import changes nothing"
    (tmp_path / "pkgx" / "helper.py").write_text("# a comment\ndef g():\n    '''doc'''\n    return 1\n")
    assert module_hash("pkgx.plug", plug) == h0, "comments and docstrings are not code"
    (tmp_path / "pkgx" / "helper.py").write_text("def g():\n    return 3\n")
    h1 = module_hash("pkgx.plug", plug)
    assert h1 != h0, "a relative import (from . import helper) is followed"
    (tmp_path / "pkgx" / "other.py").write_text("def f():\n    return 5\n")
    assert module_hash("pkgx.plug", plug) != h1, "an absolute import inside a function is followed"


def test_a_package_imported_under_another_name_than_its_folder_follows_relative_imports(tmp_path: Path) -> None:
    """The built-ins are the folder plugins/ imported as arena_plugins: names resolve below the folder."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "plug.py").write_text("from .helper import g\nfrom . import sub\n")
    (folder / "helper.py").write_text("def g():\n    return 1\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "__init__.py").write_text("from ..helper import g\nfrom .deep import h\n")
    (folder / "sub" / "deep.py").write_text("h = 1\n")
    files = module_files("renamed.plug", folder / "plug.py")
    assert set(files) == {"renamed", "renamed.plug", "renamed.helper", "renamed.sub", "renamed.sub.deep"}, files
    assert files["renamed.sub.deep"] == (folder / "sub" / "deep.py").resolve()
    h0 = module_hash("renamed.plug", folder / "plug.py")
    (folder / "sub" / "deep.py").write_text("h = 2\n")
    assert module_hash("renamed.plug", folder / "plug.py") != h0


def test_builtin_plugins_hash_their_shared_modules() -> None:
    assert "arena_plugins.emn_common" in module_files("arena_plugins.emn_samplewise")
    assert "arena_plugins.ddpm" in module_files("arena_plugins.jcdp")
    assert not [m for m in module_files("arena_plugins.jcdp") if m.split(".")[0] == "arena"], \
        "the core is hashed per stage, not per plugin"
    assert set(CORE) == {"protect", "purify", "train"} and core_hash("train") != core_hash("protect")


def test_editing_emn_common_moves_exactly_the_entries_that_import_it() -> None:
    """Through the registry, as grid.expand hashes entries: the four protectors built on emn_common."""
    from arena.codehash import entry_modules
    from arena.registry import get_registry

    reg = get_registry()
    common = (ROOT / "plugins" / "emn_common.py").resolve()

    def uses_common(name: str) -> bool:
        return any(common in module_files(m).values() for m in entry_modules(reg, "protectors", name))

    users = {n for n in reg.names("protectors") if uses_common(n)}
    assert {"emn-samplewise", "emn-classwise", "sem", "rem"} <= users, users
    assert not users & {"none", "classwise-noise", "classwise-patch", "lsp", "ar"}, users


PLUGIN = '''
import torch

from arena import Budget, Protector, hookimpl

SHIFT = 1


class Edit(Protector):
    name = "test-edited"

    def budget(self, train):
        return Budget("linf", 8 / 255)

    def protect(self, train, ctx):
        return (train.images.int() + SHIFT).clamp(0, 255).to(torch.uint8)


@hookimpl
def arena_register_protectors(register):
    register(Edit)
'''


@pytest.fixture(scope="module")
def ray_with_plugin_dir(tmp_path_factory: pytest.TempPathFactory):
    """Ray workers import the tournament's plugin module from a directory on their PYTHONPATH."""
    import ray

    from arena.tournament.runner import _init_ray

    d = tmp_path_factory.mktemp("plugin_dir")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(d), *([old] if old else [])])
    sys.path.insert(0, str(d))
    os.chdir(ROOT)
    _init_ray(None, None)
    yield d
    ray.shutdown()
    sys.path.remove(str(d))
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def test_editing_a_yaml_loaded_plugin_recomputes_exactly_its_stages(tmp_path: Path, ray_with_plugin_dir: Path) -> None:
    mod = ray_with_plugin_dir / "arena_edit_plugin.py"
    mod.write_text(PLUGIN)
    cfg = {"name": "edit", "plugins": ["arena_edit_plugin"],
           "datasets": [{"name": "digits", "params": {"size": 16}, "train": 120, "test": 60}],
           "protectors": ["test-edited", "classwise-noise"], "exploiters": ["none"], "architectures": ["cnn-small"],
           "recipe": {"epochs": 1, "batch_size": 64, "amp": "off"}, "seeds": [0],
           "resources": {"cpus_per_trial": 1}, "output": str(tmp_path / "out")}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = run_tournament(load_config(path), live=False)
    assert first.stages == {"protect": 2, "purify": 2, "train": 2}
    same = run_tournament(load_config(path), live=False)
    assert same.ran == 0 and not any(same.stages.values()), "an unchanged plugin reuses everything"

    mod.write_text(PLUGIN.replace("SHIFT = 1", "SHIFT = 1 + 1"))  # new size too: no stale .pyc in workers
    again = run_tournament(load_config(path), live=False)
    assert again.skipped == 1 and again.ran == 1
    assert again.stages == {"protect": 1, "purify": 1, "train": 1}, "classwise-noise keeps its keys"
    assert len(list((tmp_path / "out" / ".cache" / "protect").glob("*.json"))) == 3
    rows = read_rows(tmp_path / "out")
    edited = sorted((r for r in rows if r["protector"] == "test-edited"), key=lambda r: r["noise_linf"])
    assert len(edited) == 2 and edited[0]["code_hash"] != edited[1]["code_hash"]
    assert edited[1]["noise_linf"] > edited[0]["noise_linf"], "the workers ran the edited code"
    assert all(r["code_hash"] and r["precision"] == "fp32" for r in rows)
