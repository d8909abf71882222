"""Plugin discovery, registration and the `arena plugins` listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from arena import Budget, Exploiter, Protector, hookimpl
from arena.params import ParamError
from arena.registry import Registry, RegistryError, get_registry
from tests.cli_runner import run_cli

BASELINES = {"protectors": ["classwise-noise", "classwise-patch", "none"], "exploiters": ["none"]}


def test_baselines_come_from_entry_points() -> None:
    reg = get_registry()
    for kind, names in BASELINES.items():
        for n in names:
            e = reg.entry(kind, n)
            assert e.source.startswith("entry point unlearnable-arena=="), e.source
    assert {"cnn-small", "resnet18", "resnet50", "vgg11", "vgg16", "densenet121", "wrn-34-10"} <= set(
        reg.names("architectures"))
    assert {"digits", "cifar10", "cifar100", "svhn", "imagefolder"} <= set(reg.names("datasets"))


def test_plugins_json_lists_baselines_with_their_source() -> None:
    out = run_cli(["plugins", "--json"], check=True)
    data = {p["name"]: p for p in json.loads(out.stdout)}
    assert data["classwise-patch"]["registered"] == {"protectors": ["classwise-patch"]}
    assert data["classwise-patch"]["source"].startswith("entry point unlearnable-arena")
    assert "arena_register_protectors" in data["none"]["hooks"]
    assert data["classwise-noise"]["details"]["classwise-noise"]["params"]["eps"]["type"] == "float"


def _third_party(name: str) -> types.ModuleType:
    class Mine(Protector):
        summary = "test-only protector"

        def budget(self, train):
            return Budget("linf", 0.0)

        def protect(self, train, ctx):
            return train.images.clone()

    Mine.name = name
    mod = types.ModuleType("third_party_plugin")

    @hookimpl
    def arena_register_protectors(register):
        register(Mine)

    mod.arena_register_protectors = arena_register_protectors
    return mod


def test_third_party_plugin_appears_then_unregisters() -> None:
    reg = Registry()
    reg.register_plugin(_third_party("my-protector"), name="third-party")
    assert "my-protector" in reg.names("protectors")
    assert reg.entry("protectors", "my-protector").source == "registered at runtime"
    assert any(p.name == "third-party" and p.registered == {"protectors": ["my-protector"]} for p in reg.plugins())
    reg.unregister_plugin("third-party")
    assert "my-protector" not in reg.names("protectors")


def test_duplicate_names_are_an_error_naming_both_sources() -> None:
    reg = Registry()
    with pytest.raises(RegistryError) as e:
        reg.register_plugin(_third_party("classwise-patch"), name="impostor")
    msg = str(e.value)
    assert "classwise-patch" in msg and "impostor" in msg and "entry point unlearnable-arena" in msg
    assert "classwise-patch" in reg.names("protectors") and reg.pm.get_plugin("impostor") is None


def test_env_switches_select_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_PLUGINS", "none,architectures")
    reg = Registry()
    assert reg.names("protectors") == ["none"] and reg.names("datasets") == []
    monkeypatch.delenv("ARENA_PLUGINS")
    monkeypatch.setenv("ARENA_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert Registry().names("protectors") == []
    monkeypatch.setenv("ARENA_PLUGINS", "no-such-plugin")
    with pytest.raises(RegistryError, match="no-such-plugin"):
        Registry()


def test_bad_names_and_params_are_one_line_errors_listing_choices() -> None:
    reg = get_registry()
    with pytest.raises(RegistryError) as e:
        reg.protector("emn-typo")
    assert "valid choices" in str(e.value) and "classwise-patch" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ParamError) as e:
        reg.protector("classwise-patch", {"corner": "middle"})
    assert "corner" in str(e.value) and "bottom-right" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ParamError, match="eps"):
        reg.protector("classwise-noise", {"eps": 2.0})
    with pytest.raises(ParamError, match="valid params: eps"):
        reg.protector("classwise-noise", {"epsilon": 0.1})


def test_exploiter_contract_defaults() -> None:
    class DataOnly(Exploiter):
        name = "data-only"

        def purify(self, protected, raw, ctx):
            return None

    assert DataOnly().has_purify and not DataOnly().has_training_mod
    assert Exploiter.composable is True  # exploiters compose unless they say otherwise


def test_context_scratch_is_removed_with_the_context(tmp_path) -> None:
    """A tournament makes a Context per stage; each default scratch dir must go away with it, while a
    scratch the caller names is the caller's and stays."""
    import gc

    from arena import Context

    ctx = Context()
    scratch = ctx.scratch
    (scratch / "f.bin").write_bytes(b"x")
    assert ctx.cache_path("a").parent == scratch / "cache"
    del ctx
    gc.collect()
    assert not scratch.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    ctx = Context(scratch=mine)
    del ctx
    gc.collect()
    assert mine.is_dir()


ROOT = Path(__file__).resolve().parents[1]


def _plugins_json(cwd: Path, pythonpath: str | None = None) -> dict[str, dict]:
    # A real interpreter, not tests/cli_runner.py: the question is what a fresh process imports with a decoy
    # ``plugins`` package first on sys.path, and the runner's children have the built-ins imported already.
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    out = subprocess.run([sys.executable, "-m", "arena.cli", "plugins", "--json"], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return {p["name"]: p for p in json.loads(out.stdout)}


def test_a_users_own_plugins_folder_does_not_shadow_the_builtins(tmp_path: Path) -> None:
    """A project with its own ``plugins`` package, first on sys.path (its working directory, as Ray workers
    have it): the built-ins import as ``arena_plugins`` and all of them are listed."""
    decoy = tmp_path / "project"
    (decoy / "plugins").mkdir(parents=True)
    (decoy / "plugins" / "__init__.py").write_text("raise ImportError('the decoy plugins package was imported')\n")
    (decoy / "plugins" / "none.py").write_text("raise ImportError('the decoy plugins.none was imported')\n")
    mine = _plugins_json(decoy, os.pathsep.join([str(decoy), str(ROOT)]))
    assert mine == _plugins_json(ROOT), "the same built-ins, registering the same entries"
    assert {"none", "classwise-noise", "emn-samplewise", "jcdp"} <= set(mine)


def test_a_checkout_runs_its_own_builtin_plugins() -> None:
    """From a checkout (a git worktree too), ``arena_plugins`` is that checkout's ``plugins/`` folder even
    when an editable install maps the name to another checkout; see arena/checkout.py."""
    # A real interpreter: what a fresh process imports is the question (the CLI runner has it imported).
    out = subprocess.run([sys.executable, "-c", "import arena, arena_plugins; print(arena_plugins.__file__)"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    assert Path(out.stdout.strip()).resolve() == (ROOT / "plugins" / "__init__.py").resolve()
    reg = get_registry()
    for name in ("none", "emn-samplewise"):
        mod = reg.pm.get_plugin(name)
        assert mod.__name__.startswith("arena_plugins."), mod.__name__
        assert Path(mod.__file__).resolve().parent == (ROOT / "plugins").resolve()


def test_pyproject_packages_list_every_arena_package() -> None:
    """``package-dir`` needs an explicit package list: a new subpackage left out would be missing from a
    wheel while every test in a checkout still passes."""
    tomllib = pytest.importorskip("tomllib")
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "arena").rglob("__init__.py")}
    assert set(tool["packages"]) == on_disk | {"arena_plugins"}
    assert tool["package-dir"]["arena_plugins"] == "plugins"
    assert (ROOT / "plugins" / "__init__.py").is_file()


def test_surrogates_are_built_in_the_victim_trainers_layout() -> None:
    """A plugin's own PGD / min-min loops run on ``ctx.build_model``'s weights: NHWC unless the tournament
    recipe turns it off, and the model computes the same function in either layout."""
    import torch

    from arena import Context
    from arena.data import ImageSet
    from arena.trainer import Recipe

    data = ImageSet(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.arange(4) % 2, ["a", "b"])
    nhwc = Context().build_model("cnn-tiny", data, seed=3)
    nchw = Context(recipe=Recipe(channels_last="off")).build_model("cnn-tiny", data, seed=3)
    weight = lambda m: next(p for p in m.parameters() if p.dim() == 4)  # noqa: E731
    assert weight(nhwc).is_contiguous(memory_format=torch.channels_last)
    assert weight(nchw).is_contiguous() and not weight(nchw).is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(nhwc.eval()(x), nchw.eval()(x), atol=1e-5)
