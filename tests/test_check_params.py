"""``check_params`` (issue 15): every built-in plugin's conformance check runs on the cheap settings its
author declares, a given ``--params`` replaces them, the output says which ran, and a stale declaration is
a one-line error naming the plugin and the key before anything runs.

This is where every built-in's contract runs on its check_params; a method's own test module adds a
contract run only for params that change what the method does."""

from __future__ import annotations

import textwrap
import time
import types

import pytest

from arena.conformance import assert_conforms, check_params_for, check_plugin
from arena.params import ParamError
from arena.registry import Registry, get_registry

pytestmark = pytest.mark.usefixtures("one_thread")

# What "takes seconds" means on the shared 2-core test machine, with slack for the other sessions on it:
# a plugin that checks its paper defaults (5,000 ResNet-18 steps for sem) runs for many minutes instead.
CHECK_SECONDS = 90


def _builtins() -> list[tuple[str, str]]:
    """(kind, name) of every protector and exploiter this distribution registers and whose module imports
    here (an entry point whose module is missing is skipped by the registry with one line)."""
    reg = get_registry()
    out = []
    for kind in ("protector", "exploiter"):
        for name in reg.names(kind + "s"):
            if reg.entry(kind + "s", name).source.startswith("entry point unlearnable-arena"):
                out.append((kind, name))
    return out


@pytest.mark.parametrize("kind,name", _builtins())
def test_every_builtin_plugin_conforms_in_seconds(kind: str, name: str) -> None:
    t0 = time.perf_counter()
    results = assert_conforms(kind, name)
    took = time.perf_counter() - t0
    assert results[0].name == "params used"
    assert took < CHECK_SECONDS, f"{kind} '{name}': check took {took:.0f} s; declare cheaper check_params"


PLUGINS = textwrap.dedent('''
    from arena import Budget, Param, ParamSpec, Protector, hookimpl


    class Slow(Protector):
        name = "cp-slow"
        params = ParamSpec((Param("steps", int, 1000, "work to do", low=0), Param("eps", float, 4 / 255, low=0.0)))
        check_params = {"steps": 1}

        def budget(self, train):
            return Budget("linf", self.p["eps"])

        def protect(self, train, ctx):
            if self.p["steps"] > 1:
                raise AssertionError(f"ran {self.p['steps']} steps: the check did not use check_params")
            return train.images


    class Stale(Slow):
        name = "cp-stale"
        check_params = {"stepz": 1}


    class OutOfRange(Slow):
        name = "cp-range"
        check_params = {"steps": -3}


    @hookimpl
    def arena_register_protectors(register):
        for cls in (Slow, Stale, OutOfRange):
            register(cls)
''')


def _registry() -> Registry:
    mod = types.ModuleType("check_params_plugins")
    exec(compile(PLUGINS, "check_params_plugins.py", "exec"), mod.__dict__)
    reg = Registry()
    reg.register_plugin(mod)
    return reg


def test_check_params_run_unless_params_are_given() -> None:
    reg = _registry()
    results = assert_conforms("protector", "cp-slow", reg=reg)
    assert results[0].detail == "the plugin's check_params over the defaults: {'steps': 1}"
    # given params replace check_params whole: {} is the defaults, which this plugin refuses to run
    failed = [r for r in check_plugin("protector", "cp-slow", {}, reg=reg) if not r.ok]
    assert failed and all("did not use check_params" in r.detail for r in failed if "protect" in r.name)
    given = check_plugin("protector", "cp-slow", {"eps": 2 / 255, "steps": 0}, reg=reg)
    assert given[0].detail.startswith("given params over the defaults") and all(r.ok for r in given)


@pytest.mark.parametrize("name,needle", [("cp-stale", "unknown param 'stepz'"),
                                         ("cp-range", "param 'steps' = -3: expected int >= 0")])
def test_a_bad_check_params_is_one_line_naming_plugin_and_key(name: str, needle: str) -> None:
    reg = _registry()
    with pytest.raises(ParamError) as e:
        check_plugin("protector", name, reg=reg)
    msg = str(e.value)
    assert "\n" not in msg and f"protector '{name}' check_params" in msg and needle in msg, msg
    with pytest.raises(ParamError):
        check_params_for(reg.entry("protectors", name).obj, None)


def test_the_command_says_which_params_ran(tmp_path, capsys: pytest.CaptureFixture) -> None:
    from arena.cli import main

    f = tmp_path / "check_params_cli.py"
    f.write_text(PLUGINS)
    assert main(["check-plugin", "cp-slow", "--plugins", str(f)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "PASS protector cp-slow: params used (the plugin's check_params over the defaults: {'steps': 1})" in out
    assert main(["check-plugin", "cp-stale", "--plugins", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cp-stale" in err and "stepz" in err, err
