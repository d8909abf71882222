"""The forking CLI runner of tests/cli_runner.py gives what a real ``python -m arena.cli`` gives: exit codes,
stdout and stderr (fd-level, grandchildren included), the caller's cwd and environment, a traceback and a
non-zero code for a real bug, a killed and reported hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import ROOT, CliTimeout, run_cli


def _module(tmp_path: Path, name: str, body: str) -> dict[str, str]:
    """A throw-away module to run in the child; the environment that puts it on the child's sys.path."""
    (tmp_path / f"{name}.py").write_text(body)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_user_error_matches_a_real_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    """One real interpreter start-up, kept on purpose: the runner is compared with what it replaces."""
    monkeypatch.delenv("ARENA_DATA", raising=False)
    args = ["train", "--protector", "nope"]
    real = subprocess.run([sys.executable, "-m", "arena.cli", *args], capture_output=True, text=True, cwd=ROOT)
    fast = run_cli(args, cwd=ROOT)
    assert (fast.returncode, fast.stdout, fast.stderr) == (real.returncode, real.stdout, real.stderr)
    assert fast.returncode == 2 and len(fast.stderr.strip().splitlines()) == 1 and "valid choices" in fast.stderr


def test_bad_flag_is_argparse_exit_2() -> None:
    r = run_cli(["train", "--no-such-flag"])
    assert r.returncode == 2 and r.stdout == "" and "unrecognized arguments: --no-such-flag" in r.stderr
    assert r.stderr.strip().splitlines()[0].startswith("usage: arena"), r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(subprocess.CalledProcessError):
        run_cli(["train", "--no-such-flag"], check=True)


def test_uncaught_exception_is_a_traceback_and_exit_1(tmp_path: Path) -> None:
    env = _module(tmp_path, "runner_boom", "import sys\nprint('before', flush=True)\n"
                                           "raise RuntimeError('a real bug')\n")
    r = run_cli([], module="runner_boom", env=env)
    assert r.returncode == 1 and r.stdout == "before\n"
    assert "Traceback (most recent call last)" in r.stderr and "RuntimeError: a real bug" in r.stderr, r.stderr


def test_exit_codes_cwd_env_argv_and_fd_level_output(tmp_path: Path) -> None:
    env = _module(tmp_path, "runner_probe", (
        "import atexit, os, sys, threading, time\n"
        "print(os.getcwd(), os.environ.get('RUNNER_PROBE'), 'ARENA_DATA' in os.environ, sys.argv[1:])\n"
        "sys.stdout.flush()\n"
        "os.system('echo from-a-grandchild; echo on-fd2 >&2')\n"  # C-level fds 1 and 2
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread joined'))).start()\n"
        "sys.exit(int(sys.argv[1]))\n"))
    env["RUNNER_PROBE"] = "yes"
    env.pop("ARENA_DATA", None)
    (tmp_path / "here").mkdir()
    r = run_cli(["3", "x y"], module="runner_probe", env=env, cwd=tmp_path / "here")
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines() == [f"{tmp_path / 'here'} yes False ['3', 'x y']", "from-a-grandchild",
                                     "thread joined", "atexit ran"], r.stdout
    assert r.stderr == "on-fd2\n"


def test_caller_environment_reaches_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """``env=None`` is the caller's os.environ at call time, not the server's, and the registry follows it."""
    monkeypatch.setenv("ARENA_PLUGINS", "no-such-entry-point")
    r = run_cli(["plugins"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "ARENA_PLUGINS names 'no-such-entry-point'" in lines[0], r.stderr


def test_a_hang_is_killed_and_reported_with_its_output(tmp_path: Path) -> None:
    env = _module(tmp_path, "runner_hang", "import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    with pytest.raises(CliTimeout) as e:
        run_cli([], module="runner_hang", env=env, timeout=2)
    assert e.value.output == "started\n" and "started" in str(e.value)
    assert run_cli(["--version"]).stdout == "unlearnable-arena 0.1.0\n"  # the server still serves
