"""Run ``python -m arena.cli ARGS`` for a test without paying the interpreter's start-up each time.

Why: a fresh ``python -m arena.cli`` spends ~3 s importing torch and ~3 s importing the built-in plugins
before it parses its first flag, and the suite runs the CLI about 40 times. One long-lived server process
per test session imports all of that once (torch, numpy, pyarrow, yaml, rich, ``arena``, every command
module of ``arena.cli`` and every built-in plugin; never ray, and never a torch op, so no Python thread and
no torch thread pool exists at fork time) and then ``os.fork()``s once per call. The child is a real,
separate process running the real entry: it takes the caller's cwd, the caller's environment (``os.environ``
replaced, so ``monkeypatch.delenv`` reaches it), ``sys.path`` as ``-m`` builds it from that cwd and
``PYTHONPATH``, fresh stdio on fds 0/1/2 (``dup2``, so C code and grandchildren are captured too), resets
the process-global state that depends on the environment, runs ``arena.cli`` as ``__main__`` with
``runpy`` exactly as ``-m`` does, and ends like the interpreter does (``SystemExit`` codes, a traceback and
exit code 1 for an uncaught exception, non-daemon threads joined, atexit handlers run, streams flushed).

Not a substitute where a test needs what only a fresh interpreter has: a module import that must happen
from scratch (sys.path shadowing, the checkout's import mapping), interpreter or entry-point start-up, a
driver killed or held from the outside, ``ray start`` or a second node. Such tests keep ``subprocess`` and
say why.

Known differences from a fresh interpreter, none of which a test here depends on: modules are imported
from the checkout the server started in (a fresh process started elsewhere would import the installed
one); the hash seed is the server's, shared by all children; anything printed while preloading is replayed
at the start of every child's output, as a fresh process would print it on import.
"""

from __future__ import annotations

import json
import locale
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ENV_AT_IMPORT = dict(os.environ)  # after conftest set ARENA_*, before any test monkeypatches it
_SETUP_FAILED = 70  # the child could not be set up: a runner fault, never the CLI's own exit code


class CliTimeout(subprocess.TimeoutExpired):
    """A hung CLI call, killed; its message carries what it printed so the failing test shows it."""

    def __str__(self) -> str:
        def tail(s: str | bytes | None) -> str:
            s = s.decode(errors="replace") if isinstance(s, bytes) else (s or "")
            return s[-4000:]

        return (f"{super().__str__()} (killed)\n--- stdout ---\n{tail(self.output)}\n"
                f"--- stderr ---\n{tail(self.stderr)}")


class CliServer:
    """One forking server process; calls are serialised (one child at a time), as the tests run them."""

    def __init__(self, env: Mapping[str, str] | None = None, ready_timeout: float = 600) -> None:
        self._lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="arena-cli-runner-")
        self._log = Path(self._tmp.name) / "server.log"
        self._n = 0
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, bufsize=0,
                                         env=dict(env if env is not None else _ENV_AT_IMPORT))
        self._buf = b""
        ready = self._read_msg(ready_timeout)
        if ready.get("error"):
            raise RuntimeError(f"arena CLI server failed to start: {ready['error']}")

    def _server_log(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _read_msg(self, timeout: float | None) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"arena CLI server exited (rc {self.proc.wait()}); its log:\n{self._server_log()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, args: Sequence[str], *, cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 600, text: bool = True, check: bool = False,
            module: str = "arena.cli") -> subprocess.CompletedProcess:
        """``subprocess.run([sys.executable, "-m", module, *args], capture_output=True, ...)``; ``module`` is
        another module only for the runner's own tests."""
        cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
        if not os.path.isdir(cwd):
            raise FileNotFoundError(f"cwd {cwd!r} is not a directory")  # what subprocess.run raises too
        cmd = [sys.executable, "-m", module, *map(str, args)]
        with self._lock:
            self._n += 1
            out, err = (Path(self._tmp.name) / f"{self._n}.{s}" for s in ("out", "err"))
            req = {"argv": [str(a) for a in args], "module": module, "cwd": cwd, "out": str(out), "err": str(err),
                   "env": dict(os.environ if env is None else env)}
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            pid = self._read_msg(60)["pid"]
            try:
                rc = self._read_msg(timeout)["rc"]
                timed_out = False
            except TimeoutError:
                for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                    try:
                        kill()
                    except OSError:
                        pass
                rc = self._read_msg(60)["rc"]
                timed_out = True
            stdout, stderr = (_decode(p.read_bytes(), text) for p in (out, err))
            out.unlink()
            err.unlink()
        if timed_out:
            raise CliTimeout(cmd, timeout, output=stdout, stderr=stderr)
        if rc == _SETUP_FAILED and "cli_runner: child setup failed" in (stderr if text else stderr.decode()):
            raise RuntimeError(f"arena CLI server could not set up the call:\n{stderr}")
        result = subprocess.CompletedProcess(cmd, rc, stdout, stderr)
        if check:
            result.check_returncode()
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # it holds no state worth a clean exit, and an interpreter's teardown costs seconds
            self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()
        self._tmp.cleanup()


def _decode(data: bytes, text: bool) -> str | bytes:
    """As ``subprocess.run(text=True)`` decodes: the locale's encoding, universal newlines."""
    if not text:
        return data
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


_SERVER: CliServer | None = None


def run_cli(args: Sequence[str], *, cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 600, text: bool = True, check: bool = False,
            module: str = "arena.cli") -> subprocess.CompletedProcess:
    """``python -m arena.cli *args`` as a drop-in for ``subprocess.run(..., capture_output=True)``: the
    session's server is started on first use (so a session that never calls the CLI never pays for it);
    ``env=None`` passes the caller's current ``os.environ``; a call past ``timeout`` is killed and raises
    :class:`CliTimeout` with what it printed."""
    global _SERVER
    if _SERVER is None or _SERVER.proc.poll() is not None:
        _SERVER = CliServer()
    if os.environ.get("ARENA_TEST_CLI_COMPARE") and module == "arena.cli":
        _compare(args, cwd, env, timeout, text)
    return _SERVER.run(args, cwd=cwd, env=env, timeout=timeout, text=text, check=check, module=module)


def _compare(args: Sequence[str], cwd: str | os.PathLike | None, env: Mapping[str, str] | None,
             timeout: float | None, text: bool) -> None:
    """``ARENA_TEST_CLI_COMPARE=1``: run each call a second time in a real interpreter and fail on a different
    exit code or stderr, so the runner can be checked against what it replaces whenever it changes. The
    calls run one after the other on the same files: a call that changes them may differ for that reason."""
    real = subprocess.run([sys.executable, "-m", "arena.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=text, timeout=timeout, env=None if env is None else dict(env))
    fast = _SERVER.run(args, cwd=cwd, env=env, timeout=timeout, text=text)
    with open(os.environ["ARENA_TEST_CLI_COMPARE"], "a") if os.environ["ARENA_TEST_CLI_COMPARE"] != "1" \
            else open(os.devnull, "w") as log:
        log.write(json.dumps({"args": list(map(str, args)), "rc": [real.returncode, fast.returncode],
                              "stderr_same": real.stderr == fast.stderr, "stdout_same": real.stdout == fast.stdout,
                              "stderr": fast.stderr[-300:]}) + "\n")
    assert (fast.returncode, fast.stderr) == (real.returncode, real.stderr), (
        f"runner and real interpreter differ for {list(args)}:\nreal rc {real.returncode}, stderr:\n{real.stderr}"
        f"\nrunner rc {fast.returncode}, stderr:\n{fast.stderr}")


def shutdown() -> None:
    """Stop the session's server, if one was started."""
    global _SERVER
    if _SERVER is not None:
        _SERVER.close()
        _SERVER = None


# --- the server side: runs as ``python tests/cli_runner.py --serve`` from the checkout root -----------------

def _preload() -> None:
    import importlib
    import importlib.metadata as md

    import numpy  # noqa: F401
    import pyarrow  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import rich.console  # noqa: F401
    import rich.table  # noqa: F401
    import torch  # noqa: F401
    import yaml  # noqa: F401

    # Not ``arena.cli`` itself: ``-m`` runs it as ``__main__`` without it in sys.modules (runpy warns when it
    # is there already); what it costs to import is the command modules, loaded here.
    import arena
    import arena.registry  # noqa: F401
    from arena.commands import COMMANDS

    for name in COMMANDS:
        importlib.import_module(f"arena.commands.{name}")
    for ep in md.entry_points(group="arena"):  # the built-in plugins (a checkout maps them to its plugins/)
        if ep.dist is not None and ep.dist.name == "unlearnable-arena":
            ep.load()
    del arena


def _capture_fds(out: str, err: str) -> tuple[int, int]:
    saved = os.dup(1), os.dup(2)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    return saved


def _serve() -> None:
    sys.path[0] = str(ROOT)  # as ``python -m`` from the checkout root has it (not this script's folder)
    base_path = sys.path[1:]
    start_pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    base_path = [p for p in base_path if p not in start_pythonpath]
    reply = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray output of the server goes to its log, never into the reply channel
    requests = os.fdopen(os.dup(0), "rb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    def send(msg: dict) -> None:
        reply.write(json.dumps(msg).encode() + b"\n")

    # What importing prints, a fresh ``python -m arena.cli`` would print too: kept and replayed per child.
    cap = tempfile.mkdtemp(prefix="arena-cli-preload-")
    saved = _capture_fds(os.path.join(cap, "out"), os.path.join(cap, "err"))
    error = None
    try:
        _preload()
    except BaseException as e:  # noqa: BLE001  (reported to the caller, which fails the test)
        error = f"preloading raised {type(e).__name__}: {e}"
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, s in zip((1, 2), saved):
        os.dup2(s, fd)
        os.close(s)
    with open(os.path.join(cap, "out"), "rb") as f:
        preload_out = f.read()
    with open(os.path.join(cap, "err"), "rb") as f:
        preload_err = f.read()
    for n in ("out", "err"):
        os.unlink(os.path.join(cap, n))
    os.rmdir(cap)
    if error is None and threading.active_count() != 1:
        error = f"preloading started Python threads {threading.enumerate()}: fork would not be safe"
    if error is None and "ray" in sys.modules:
        error = "preloading imported ray: its state must not be shared by forked children"
    send({"ready": True, "error": error})
    if error:
        return
    start_env = dict(os.environ)
    for line in requests:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            rc = _SETUP_FAILED
            try:
                reply.close()
                requests.close()
                rc = _child(req, base_path, start_env, preload_out, preload_err)
            finally:
                os._exit(rc)
        send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        send({"rc": os.waitstatus_to_exitcode(status)})


def _child(req: dict, base_path: list[str], start_env: dict, preload_out: bytes, preload_err: bytes) -> int:
    """Runs in the forked child: set up the process as a fresh ``python -m arena.cli`` would be, run it, and
    return the exit status the interpreter would have given."""
    import atexit
    import importlib
    import io
    import runpy
    import traceback

    try:
        os.setpgid(0, 0)  # its own process group: a timeout kills it with anything it started
        for fd, path in ((1, req["out"]), (2, req["err"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        os.write(1, preload_out)
        os.write(2, preload_err)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])  # putenv too: C code and grandchildren see the caller's environment
        pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [req["cwd"], *pythonpath, *base_path]  # ``-m``: the cwd first, then PYTHONPATH, then site
        importlib.invalidate_caches()
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        enc = sys.stdout.encoding
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(open(0, "rb", closefd=False), encoding=enc)
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", closefd=False), encoding=enc,
                                                       write_through=unbuffered)
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(open(2, "wb", closefd=False), encoding=enc,
                                                       errors="backslashreplace", line_buffering=True)
        _reset_process_state(start_env)
        sys.argv = ["-m", *req["argv"]]
    except BaseException:  # noqa: BLE001
        os.write(2, ("cli_runner: child setup failed\n" + traceback.format_exc()).encode())
        return _SETUP_FAILED

    rc = 0
    try:
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        rc = _exit_status(e.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        rc = -signal.SIGINT
    except BaseException:  # noqa: BLE001  (an uncaught exception: what the interpreter prints, exit code 1)
        sys.excepthook(*sys.exc_info())
        rc = 1
    # the interpreter's shutdown: join non-daemon threads, run atexit handlers, flush the streams
    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            rc = 120 if rc == 0 else rc  # as CPython does when flushing stdout fails at exit
    if rc == -signal.SIGINT:  # CPython re-raises an uncaught KeyboardInterrupt as the signal itself
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return rc


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives: None 0, an int itself, anything else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _reset_process_state(start_env: dict) -> None:
    """Process-global state a fresh interpreter would build from the caller's environment, not the server's."""
    import numpy as np
    import torch

    from arena.registry import reset_registry

    reset_registry()  # built from ARENA_PLUGINS / ARENA_DISABLE_PLUGIN_AUTOLOAD on first use
    tempfile.tempdir = None  # gettempdir() caches TMPDIR
    np.random.seed()  # numpy's global state is not reseeded on fork (``random`` is)
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads != start_env.get("OMP_NUM_THREADS") and threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))  # read once by the OpenMP runtime, when the server started


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
