"""Writing a plugin (issue 18, item 6): ``plugins:`` modules beside a tournament file, one-line import
errors, refused hook names, broken entry points, ``arena check-plugin --plugins``, the conformance check's
seeds and input checks, and the README's own example."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml

from arena.codehash import CodeHasher
from arena.registry import Registry, RegistryError, load_extra_plugins, resolve_plugin
from arena.tournament.config import ConfigError, load_config
from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _protector_module(name: str, protector: str) -> str:
    return textwrap.dedent(f'''
        from arena import Budget, Protector, hookimpl


        class P(Protector):
            name = "{protector}"

            def budget(self, train):
                return Budget("linf", 0.0)

            def protect(self, train, ctx):
                return train.images


        @hookimpl
        def arena_register_protectors(register):
            register(P)
        ''')


def _tournament(folder: Path, plugins: list, protector: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "t.yaml"
    p.write_text(yaml.safe_dump({
        "plugins": plugins, "datasets": [{"name": "digits", "params": {"size": 16}, "train": 200, "test": 100}],
        "protectors": [protector], "exploiters": ["none"], "architectures": ["cnn-small"],
        "recipe": {"epochs": 1, "batch_size": 64}, "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
        "output": "out"}))
    return p


# -- plugins: beside the tournament file ---------------------------------------------------------------
def test_module_name_beside_the_yaml_loads_from_any_working_directory(tmp_path, monkeypatch) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "authoring_beside.py").write_text(_protector_module("authoring_beside", "beside-prot"))
    path = _tournament(tmp_path / "t", ["authoring_beside"], "beside-prot")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the issue: "No module named" in the driver
    reg = Registry()
    cfg = load_config(path, reg=reg)
    assert cfg.plugin_modules == [str(tmp_path / "t" / "authoring_beside.py")]
    assert [p.name for p in cfg.protectors] == ["beside-prot"]
    assert reg.entry("protectors", "beside-prot").plugin == "authoring_beside"
    # stage keys hash the module's code: editing the file moves them
    before = CodeHasher(reg).entry("protectors", "beside-prot")
    f = tmp_path / "t" / "authoring_beside.py"
    f.write_text(f.read_text().replace("return train.images", "return train.images.clone()"))
    assert CodeHasher(reg).entry("protectors", "beside-prot") != before


def test_path_entry_is_relative_to_the_yaml_and_loads_the_same_in_a_worker_process(tmp_path, monkeypatch) -> None:
    (tmp_path / "t" / "mine").mkdir(parents=True)
    (tmp_path / "t" / "mine" / "authoring_bypath.py").write_text(
        _protector_module("authoring_bypath", "bypath-prot") + "\nfrom authoring_helper import VALUE\n")
    (tmp_path / "t" / "mine" / "authoring_helper.py").write_text("VALUE = 3\n")  # a sibling import works
    path = _tournament(tmp_path / "t", ["mine/authoring_bypath.py"], "bypath-prot")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, reg=Registry())
    entry = str(tmp_path / "t" / "mine" / "authoring_bypath.py")
    assert cfg.plugin_modules == [entry]
    # what a worker does with the entries it is handed, in a fresh process started somewhere else (a real
    # interpreter, not tests/cli_runner.py: the question is what a process that imported nothing yet can import)
    code = ("import sys; from arena.registry import Registry, load_extra_plugins; reg = Registry(); "
            "print(load_extra_plugins(reg, sys.argv[1:]), reg.names('protectors'))")
    out = subprocess.run([sys.executable, "-c", code, *cfg.plugin_modules], cwd="/", capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "['authoring_bypath']" in out.stdout and "'bypath-prot'" in out.stdout


@pytest.mark.parametrize("source, where, needle", [
    ("import os\nx = 1\ndef f(:\n    pass\n", "line 3", "SyntaxError"),
    ("import os\n\nraise RuntimeError('plugin says no')\n", "line 3", "RuntimeError: plugin says no"),
    ("import os\nimport authoring_no_such_dependency\n", "line 2",
     "No module named 'authoring_no_such_dependency'"),
])
def test_an_import_error_in_a_plugin_module_is_one_line_naming_file_and_line(tmp_path, source, where, needle) -> None:
    stem = f"authoring_broken_{abs(hash(source)) % 10**8}"
    (tmp_path / f"{stem}.py").write_text(source)
    for entry in (stem, f"{stem}.py"):  # by module name and by path
        path = _tournament(tmp_path, [entry], "none")
        with pytest.raises(ConfigError) as e:
            load_config(path, reg=Registry())
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{path}: plugins[0]: cannot import"), msg
        assert f"{stem}.py, {where}" in msg and needle in msg, msg
    assert stem not in sys.modules  # nothing half-imported is left behind


def test_plugin_entries_of_the_wrong_kind_are_one_line_errors(tmp_path) -> None:
    for entry, needle in ((3, "plugins[0] = 3: expected a module name or a .py path"),
                          ("no/such/file.py", "no such file"),
                          ("not a module!", "not a module name"),
                          ("authoring_nowhere_to_be_found", "no module named 'authoring_nowhere_to_be_found'")):
        with pytest.raises(ConfigError) as e:
            load_config(_tournament(tmp_path, [entry], "none"), reg=Registry())
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_module_name_taken_by_another_file_is_refused(tmp_path) -> None:
    (tmp_path / "json.py").write_text("")
    with pytest.raises(RegistryError, match="module name 'json' is already taken by .*rename the file"):
        load_extra_plugins(Registry(), [resolve_plugin("json.py", tmp_path)])


# -- hook names -----------------------------------------------------------------------------------------
def _module(name: str, source: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), mod.__dict__)
    return mod


def test_a_misspelt_hook_is_refused_and_registers_nothing() -> None:
    reg = Registry()
    mod = _module("authoring_misspelt", '''
        from arena import hookimpl
        from arena.contracts import Protector

        class P(Protector):
            name = "misspelt-prot"

        @hookimpl
        def arena_register_protector(register):  # singular: not an arena hook
            register(P)
        ''')
    with pytest.raises(RegistryError) as e:
        reg.register_plugin(mod)
    msg = str(e.value)
    assert "'arena_register_protector', which is not an arena hook" in msg and "arena_register_protectors" in msg
    assert "\n" not in msg
    assert reg.pm.get_plugin("authoring_misspelt") is None
    reg.pm.check_pending()  # nothing unknown left behind for the next plugin to trip over


def test_a_hook_without_hookimpl_and_a_hook_with_wrong_arguments_are_refused() -> None:
    reg = Registry()
    plain = _module("authoring_plain", '''
        def arena_register_exploiters(register):
            pass
        ''')
    with pytest.raises(RegistryError, match=r"defines arena_register_exploiters\(\) without @arena.hookimpl"):
        reg.register_plugin(plain)
    wrong = _module("authoring_wrongargs", '''
        from arena import hookimpl

        @hookimpl
        def arena_register_exploiters(reg):
            pass
        ''')
    with pytest.raises(RegistryError) as e:
        reg.register_plugin(wrong)
    msg = str(e.value)
    assert "authoring_wrongargs" in msg and "arena_register_exploiters(reg)" in msg and "{'reg'}" in msg, msg
    assert "\n" not in msg
    assert reg.pm.get_plugin("authoring_wrongargs") is None


def test_a_registration_hook_that_raises_is_one_line_naming_its_line() -> None:
    reg = Registry()
    mod = _module("authoring_raises", '''
        from arena import hookimpl

        @hookimpl
        def arena_register_protectors(register):
            raise ValueError("cannot build")
        ''')
    with pytest.raises(RegistryError) as e:
        reg.register_plugin(mod)
    msg = str(e.value)
    assert "\n" not in msg and "<authoring_raises>, line 6: ValueError: cannot build" in msg, msg
    assert reg.pm.get_plugin("authoring_raises") is None and "none" in reg.names("protectors")


def test_a_broken_entry_point_is_skipped_with_one_warning_line(tmp_path) -> None:
    site = tmp_path / "site"
    info = site / "authoring_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: authoring-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[arena]\nab-import = ab_import\nab-hook = ab_hook\nab-register = ab_register\nab-good = ab_good\n")
    (site / "ab_import.py").write_text("import os\n\nraise ImportError('needs a GPU driver')\n")
    (site / "ab_hook.py").write_text("from arena import hookimpl\n\n@hookimpl\ndef arena_register_exploiter(register):\n"
                                     "    pass\n")
    (site / "ab_register.py").write_text("from arena import hookimpl\n\n@hookimpl\ndef arena_register_protectors("
                                         "register):\n    register(object)\n")
    (site / "ab_good.py").write_text(_protector_module("ab_good", "ab-good-prot"))
    own = os.environ["ARENA_PLUGINS"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]),
           "ARENA_PLUGINS": f"{own},ab-import,ab-hook,ab-register,ab-good"}
    out = run_cli(["plugins", "--json"], env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    names = {p["name"] for p in json.loads(out.stdout)}
    assert {"ab-good", "none", "classwise-patch"} <= names and not names & {"ab-import", "ab-hook", "ab-register"}
    warnings = [ln for ln in out.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 3, out.stderr
    text = "\n".join(warnings)
    assert re.search(r"'ab-import' \(entry point authoring-broken==1.0:ab-import\) skipped: cannot import "
                     r"'ab_import': .*ab_import.py, line 3: ImportError: needs a GPU driver", text), text
    assert "'ab-hook'" in text and "'arena_register_exploiter', which is not an arena hook" in text
    assert "'ab-register'" in text and "ab_register.py, line 5" in text and "expected a named subclass" in text


# -- arena check-plugin --plugins and the conformance check ------------------------------------------------
CHEATS = '''
from pathlib import Path

from arena import Budget, Exploiter, Protector, hookimpl


class FailsOnSeedOne(Protector):
    name = "cheat-seed-one"

    def budget(self, train):
        return Budget("linf", 0.0)

    def protect(self, train, ctx):
        if ctx.seed == 1:
            raise RuntimeError("only tested with seed 0")
        return train.images


class ZeroesItsInput(Protector):
    """Returns the clean images (within any budget) but wipes what ``budget()`` was handed."""
    name = "cheat-zeroes-input"

    def budget(self, train):
        train.images.zero_()
        return Budget("linf", 8 / 255)

    def protect(self, train, ctx):
        return train.images.clone()


class ExploiterSeedOne(Exploiter):
    name = "cheat-exploiter-seed-one"
    calls = 0

    def purify(self, protected, raw, ctx):
        out = protected.images.clone()
        if ctx.seed == 1:  # not reproducible: each call on seed 1 changes a pixel by a different amount
            type(self).calls += 1
            out[0, 0, 0, 0] = (int(out[0, 0, 0, 0]) + type(self).calls) % 256
        return out


class WritesIntoProtected(Exploiter):
    name = "cheat-writes-protected"

    def purify(self, protected, raw, ctx):
        protected.images[:] = 0
        return None


class ReadsStoredSplits(Exploiter):
    """Finds the stored splits above its own directories and reads them, hiding any refusal."""
    name = "cheat-reads-files"

    def purify(self, protected, raw, ctx):
        try:
            for p in Path(ctx.cache_dir).parents[2].rglob("*.npz"):
                p.read_bytes()
        except Exception:
            pass
        return None


@hookimpl
def arena_register_protectors(register):
    register(FailsOnSeedOne)
    register(ZeroesItsInput)


@hookimpl
def arena_register_exploiters(register):
    register(ExploiterSeedOne)
    register(WritesIntoProtected)
    register(ReadsStoredSplits)
'''


@pytest.fixture(scope="module")
def cheats() -> Registry:
    reg = Registry()
    reg.register_plugin(_module("authoring_cheats", CHEATS))
    return reg


def _failed(kind: str, name: str, reg: Registry) -> dict[str, str]:
    from arena.conformance import check_plugin

    return {r.name: r.detail for r in check_plugin(kind, name, reg=reg) if not r.ok}


def test_conformance_runs_two_seeds(cheats) -> None:
    failed = _failed("protector", "cheat-seed-one", cheats)
    assert list(failed) == ["protect (seed 1): uint8, same shape and labels, budget holds after quantization"]
    assert "only tested with seed 0" in failed[next(iter(failed))]
    failed = _failed("exploiter", "cheat-exploiter-seed-one", cheats)
    assert list(failed) == ["purify: deterministic for seed 1"], failed


def test_conformance_catches_hooks_that_change_their_inputs(cheats) -> None:
    failed = _failed("protector", "cheat-zeroes-input", cheats)
    assert failed == {"hooks leave their inputs unchanged":
                      "AssertionError: budget() changed its train input in place (hooks must treat their inputs "
                      "as read-only)"}, failed
    failed = _failed("exploiter", "cheat-writes-protected", cheats)
    assert list(failed) == ["hooks leave their inputs unchanged"] and "purify() changed its protected" in str(failed)


def test_conformance_is_not_fooled_by_an_exploiter_that_reads_stored_files(cheats) -> None:
    failed = _failed("exploiter", "cheat-reads-files", cheats)
    key = "never receives clean train or test images (in memory or from files)"
    assert key in failed and "tried to access the arena's stored data" in failed[key], failed
    assert "purify (seed 0): uint8, same shape and labels" in failed  # the stage itself fails, as in a worker


def test_check_plugin_loads_a_plugin_file_that_is_not_installed(tmp_path, capsys, monkeypatch) -> None:
    from arena.cli import main

    f = tmp_path / "authoring_cli_cheats.py"
    f.write_text(CHEATS.replace('name = "cheat-', 'name = "cli-cheat-'))
    assert main(["check-plugin", "cli-cheat-reads-files", "--plugins", str(f)]) == 1
    out = capsys.readouterr().out
    assert "FAIL exploiter cli-cheat-reads-files: never receives clean train or test images" in " ".join(out.split())
    (tmp_path / "authoring_cli_ok.py").write_text(_protector_module("authoring_cli_ok", "cli-ok-prot"))
    monkeypatch.chdir(tmp_path)  # a module name, found in the working directory
    assert main(["check-plugin", "cli-ok-prot", "--plugins", "authoring_cli_ok"]) == 0
    (tmp_path / "authoring_cli_bad.py").write_text("x = (\n")
    assert main(["check-plugin", "whatever", "--plugins", str(tmp_path / "authoring_cli_bad.py")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "authoring_cli_bad.py, line 1: SyntaxError" in err, err


# -- the README's example ----------------------------------------------------------------------------------
def test_the_readme_plugin_example_registers_and_conforms() -> None:
    from arena.conformance import assert_conforms

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Writing a plugin"):]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks and "my-blur" in blocks[0], "README 'Writing a plugin' lost its example"
    mod = _module("readme_blur", blocks[0])
    reg = Registry()
    reg.register_plugin(mod)
    assert reg.entry("exploiters", "my-blur").plugin == "readme_blur"
    for params in ({}, {"k": 4}):  # an even box too: the output keeps its size
        assert_conforms("exploiter", "my-blur", params, reg=reg)
    toml = re.findall(r"```toml\n(.*?)```", section, flags=re.S)[0]
    assert '[project.entry-points.arena]\nmy-blur = "my_pkg.blur"' in toml


@pytest.mark.xdist_group("ray")
def test_a_plugin_file_beside_the_yaml_runs_in_ray_workers_from_another_directory(tmp_path, monkeypatch) -> None:
    """The whole path: driver validation, workers started elsewhere loading the same file, a real row."""
    import ray

    from arena.leaderboard import read_rows
    from arena.tournament.runner import _init_ray, run_tournament

    folder = tmp_path / "t"
    (folder / "mine").mkdir(parents=True)
    (folder / "mine" / "authoring_ray_plugin.py").write_text(_protector_module("authoring_ray_plugin", "ray-prot"))
    path = _tournament(folder, ["mine/authoring_ray_plugin.py"], "ray-prot")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the YAML's folder nor the checkout: workers find arena on PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    was_running = ray.is_initialized()
    cfg = load_config(path)
    if not was_running:
        _init_ray(None, cfg)
    try:
        run_tournament(cfg, live=False)
    finally:
        if not was_running:
            ray.shutdown()
    (row,) = read_rows(folder / "out")
    assert (row["protector"], row["status"]) == ("ray-prot", "ok"), row["error"]
