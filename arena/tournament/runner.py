"""Run a tournament on Ray: long-lived stage actors, dependency-driven scheduling, rows as cells finish.

Why actors and not one task per stage: an actor imports torch and the plugins once, keeps the loaded
splits (on the GPU when it has one) between cells, and holds a fixed, fractional share of a GPU, so
several small trainings pack onto one device. Only cache keys and small dicts cross Ray; images stay in
the tournament's storage (a directory or an object store, ``arena/storage.py``) under content keys, so
an actor on any node reads what an actor on another node wrote. The scheduling itself is
:class:`TournamentDriver`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import socket
import subprocess
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..diagnostics import is_weak
from ..integrity import IntegrityError
from ..leaderboard import finished_keys, move_aside_bad_rows, write_row
from ..params import ArenaError
from ..registry import get_registry
from ..splits import load_splits
from ..storage import Storage
from .config import ConfigError, TournamentConfig
from .grid import Cell, Grid, ProtectJob, PurifyJob, content_key, expand, resolve_precision
from .lock import DriverLock
from .stagecache import StageCache
from .worker import StageRunner


@dataclass
class Summary:
    name: str
    cells: int
    skipped: int
    ran: int
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    stages: dict[str, int] = field(default_factory=dict)  # stages computed in this run
    naive: dict[str, int] = field(default_factory=dict)
    output: Path | str = Path(".")
    unfinished: int = 0  # cells left without a row after repeated infrastructure faults

    def line(self) -> str:
        st = ", ".join(f"{v} {k}" for k, v in sorted(self.statuses.items())) or "nothing new"
        return (f"{self.name}: {self.cells} cells, {self.skipped} already finished, {self.ran} run ({st}) in "
                f"{self.seconds:.0f} s; stages computed: {self.stages.get('protect', 0)} protect, "
                f"{self.stages.get('purify', 0)} purify, {self.stages.get('train', 0)} train; rows in {self.output}"
                + (f"; {self.unfinished} cells left without a row after repeated infrastructure faults (rerun to "
                   "retry them)" if self.unfinished else ""))


def _git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare_data(cfg: TournamentConfig, cache: StageCache, store: bool = True) -> dict[int, str]:
    """Load every data set once on the driver, store its splits under a content key for the workers
    (``store=False``: only compute the keys, writing nothing, for ``--dry-run``)."""
    keys = {}
    for i, ds in enumerate(cfg.datasets):
        splits = load_splits(ds.name, ds.params, ds.root, ds.download, ds.train, ds.test, ds.raw_fraction,
                             cfg.split_seed)
        dk = content_key("data", ds.name, splits.train.fingerprint(), splits.raw.fingerprint(),
                         splits.test.fingerprint())
        if store:
            cache.store_splits(dk, splits)  # stores them, or checks the stored ones against these fresh splits
        keys[i] = dk
    return keys


def cell_columns(cell: Cell) -> dict[str, Any]:
    """A cell's identity columns in its row; the board also uses them for cells a grid has and DIR lacks."""
    return {
        "dataset": cell.dataset.name, "dataset_params": json.dumps(cell.dataset.params, sort_keys=True),
        "protector": cell.protector.name, "protector_params": cell.protector.as_json(),
        "protector_label": cell.protector.entry_label,
        "exploiter": cell.exploiter.label, "exploiter_params": cell.exploiter.params_json(),
        "exploiter_label": cell.exploiter.entry_label,
        "architecture": cell.arch.name, "recipe": json.dumps(cell.arch.recipe.to_dict(), sort_keys=True),
        "architecture_label": cell.arch.entry_label,
        "poison_ratio": cell.poison_ratio, "train_subset": cell.subset, "seed": cell.seed, "cell_key": cell.key,
    }


STORAGE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "HADOOP_", "ARROW_")


def _init_ray(address: str | None, cfg: TournamentConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"PYTHONPATH": os.pathsep.join([os.getcwd(), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])}
    for var in ("ARENA_PLUGINS", "ARENA_DISABLE_PLUGIN_AUTOLOAD", "ARENA_CACHE", "ARENA_DATA"):
        if var in os.environ:
            env[var] = os.environ[var]
    # the storage's credentials: actors open the same URI as the driver (arena/storage.py)
    env.update({k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)})
    flag = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=bool(os.environ.get("ARENA_RAY_LOG")),
                                  logging_level=logging.ERROR, runtime_env={"env_vars": env})
    if address and address != "local":
        _check_ray_address(address, flag)
        kwargs["runtime_env"]["py_modules"] = shipped_modules(cfg.plugin_modules if cfg else [])
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ArenaError(f"{flag} {address}: cannot join the Ray cluster: {first}") from None
    else:
        ray.init(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(),
                 object_store_memory=256 * 1024 * 1024, **kwargs)


def shipped_modules(plugin_modules: list[str]) -> list[Any]:
    """The code every worker must run as the driver does: this arena, the built-in ``arena_plugins`` package
    and the top-level packages of the tournament's module-name plugins, uploaded through Ray's
    ``runtime_env`` (``py_modules``) so that a node with another arena installed still runs the driver's.
    A ``.py`` path plugin is loaded by its absolute path and must sit on storage every node mounts."""
    import importlib

    import arena

    mods: dict[str, Any] = {"arena": arena}
    for name in ["arena_plugins", *(m.split(".")[0] for m in plugin_modules if not m.endswith(".py"))]:
        if name in mods:
            continue
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(mod, "__file__", None) and Path(mod.__file__).name == "__init__.py":  # a package, not a lone file
            mods[name] = mod
    return [_under_own_name(name, mod) for name, mod in mods.items()]


_SHIP_DIR: list[Any] = []  # the TemporaryDirectory of renamed copies, kept until the driver exits


def _under_own_name(name: str, mod: Any) -> Any:
    """Ray ships a package under its directory's name; the folder ``plugins/`` is the package
    ``arena_plugins``, so it travels as a copy named ``arena_plugins/`` (a user's own ``plugins`` on a
    worker's path would otherwise be what the workers import). The copy has the same files, so the code
    versions each actor reports (``versions.py``) hash the same."""
    import shutil
    import tempfile

    src = Path(mod.__file__).resolve().parent
    if src.name == name:
        return mod
    if not _SHIP_DIR:
        _SHIP_DIR.append(tempfile.TemporaryDirectory(prefix="arena-ship-"))
    dst = Path(_SHIP_DIR[0].name) / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return str(dst)


def _check_ray_address(address: str, flag: str = "--address", timeout_s: float = 3.0) -> None:
    """Refuse an address nobody answers on, in seconds. ``ray.init`` itself retries an unreachable GCS
    for minutes while printing only Ray's C++ warnings, and turns ``auto`` without a cluster into a
    traceback; a plain TCP connect to the bootstrap port tells the user the same thing at once."""
    hint = "start one with `ray start --head`, or leave out --address and RAY_ADDRESS for a local instance"
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto") or ""
        except ConnectionError:
            raise ArenaError(f"{flag} auto: no running Ray cluster found on this machine; {hint}") from None
        except (ImportError, AttributeError):  # a Ray without this helper: let ray.init decide
            return
    if target.startswith("ray://"):
        target = target[len("ray://"):]
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ArenaError(f"{flag} {address!r}: expected HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise ArenaError(f"{flag} {address}: no Ray cluster reachable at {host}:{port} ({reason}); {hint}") from None


def _node_resources() -> list[dict[str, float]]:
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def _fits(node: dict[str, float], cpus: float, gpus: float) -> int:
    """How many actors of this shape the node's total resources hold."""
    n = math.floor(node.get("CPU", 0.0) / cpus + 1e-9)
    if gpus > 0:
        n = min(n, math.floor(node.get("GPU", 0.0) / gpus + 1e-9))
    return max(n, 0)


def _check_resources(cfg: TournamentConfig, cpus: float, gpus: float, stages: tuple[str, ...]) -> int:
    """How many actors of one stage group fit; a request no single node can satisfy is a config error
    (Ray would leave its actors pending forever: resources are granted per node, never summed across)."""
    import ray

    res = ray.cluster_resources()
    total_c, total_g = res.get("CPU", 0.0), res.get("GPU", 0.0)
    key = "resources" if not cfg.stage_resources else f"resources ({'/'.join(stages)})"
    if cpus > total_c:
        raise ConfigError(f"{cfg.path}: {key}.cpus_per_trial = {cpus:g}: the Ray cluster has {total_c:g} CPUs")
    if gpus > total_g:
        raise ConfigError(f"{cfg.path}: {key}.gpus_per_trial = {gpus:g}: the Ray cluster has {total_g:g} GPUs "
                          "(use 0 for CPU)")
    nodes = _node_resources()
    n = sum(_fits(node, cpus, gpus) for node in nodes)
    if n == 0:
        shapes = ", ".join(f"{nd.get('CPU', 0):g} CPU + {nd.get('GPU', 0):g} GPU" for nd in nodes)
        raise ConfigError(f"{cfg.path}: {key}: one trial asks for {cpus:g} CPU + {gpus:g} GPU and no single Ray node "
                          f"has that (nodes: {shapes}); lower the request or add a larger node")
    return max(1, min(n, cfg.max_concurrent or n))


def oom_retry_gpus(gpus: float, node_gpus: list[float]) -> float | None:
    """The GPU share a job that ran out of CUDA memory on ``gpus`` of a GPU retries at, once: a whole GPU
    when it had a fraction and some node has a whole one (``node_gpus``: each live node's GPU count). None:
    no larger share exists, so it retries at its own (the memory may be free again once a neighbour ends)."""
    if 0 < gpus < 1 and any(n >= 1 for n in node_gpus):
        return 1.0
    return None


class _View:
    """The rich live view: cells done/running/failed, ETA, and what each actor is doing."""

    def __init__(self, name: str, total: int, console: Any) -> None:
        self.name, self.total, self.console = name, total, console
        self.done = 0
        self.counts: Counter = Counter()
        self.running: dict[int, tuple[str, float]] = {}
        self.t0 = time.perf_counter()

    def __rich__(self) -> Any:
        from rich.table import Table

        el = time.perf_counter() - self.t0
        eta = "?" if not self.done else f"{el / self.done * (self.total - self.done):.0f}s"
        bad = ", ".join(f"{v} {k}" for k, v in self.counts.items() if k != "ok")
        t = Table(title=f"[bold]{self.name}[/]: {self.done}/{self.total} cells done"
                        f"{' (' + bad + ')' if bad else ''}, {len(self.running)} running, "
                        f"elapsed {el:.0f}s, ETA {eta}", show_header=True, expand=False)
        t.add_column("actor")
        t.add_column("stage")
        t.add_column("for", justify="right")
        for a, (what, since) in sorted(self.running.items()):
            stage, _, label = what.partition(" ")
            t.add_row(str(a), f"{stage} {label}", f"{time.perf_counter() - since:.0f}s")
        return t


def _infra_errors() -> tuple[type[BaseException], ...]:
    """Ray's exceptions for a worker process or node that went away (never a plugin's own error)."""
    import ray.exceptions as rex

    names = ("RayActorError", "WorkerCrashedError", "ObjectLostError", "NodeDiedError", "OwnerDiedError",
             "ActorUnavailableError", "LocalRayletDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


def _job_label(stage: str, job: Any) -> str:
    if isinstance(job, Cell):
        return job.label()
    if isinstance(job, ProtectJob):
        return f"{job.protector.name} s{job.seed}"
    if isinstance(job, PurifyJob):
        return f"{job.exploiter.label if job.exploiter.parts else 'pass-through'} r={job.poison_ratio:g}"
    return ""


@dataclass(eq=False)
class _Pool:
    """The actors of one resource shape and the jobs waiting for them. Stages with equal resources share
    one pool (the default: every actor runs any stage and keeps its loaded splits between them)."""

    stages: tuple[str, ...]
    cpus: float
    gpus: float
    size: int
    actors: dict[int, Any] = field(default_factory=dict)  # ready or busy; starting ones are in the driver
    idle: deque = field(default_factory=deque)
    ready: deque = field(default_factory=deque)
    remote: Any = None  # the actor class with this shape's resources
    oom_only: bool = False  # started for jobs that ran out of CUDA memory on a smaller share (oom_retry_gpus)


class TournamentDriver:
    """Schedules one tournament's unfinished cells on Ray actors.

    The dependency graph is protect -> purify -> train: a job enters its pool's ``ready`` queue once its
    input's metadata is known, train jobs first so rows appear early. Three kinds of outcome:
    a result (written as a row, or metadata for the next stage), a plugin failure (final: the row says
    ``failed``/``invalid`` with its traceback), and an infrastructure fault (a dead actor or node, a
    stage file that is not there, CUDA out of memory), which is retried up to ``resources.retries``
    times and, when retries run out, leaves the cell without a row so the next run tries again."""

    def __init__(self, cfg: TournamentConfig, grid: Grid, cache: StageCache, todo: list[Cell], console: Any,
                 summary: Summary, reg: Any) -> None:
        self.cfg, self.grid, self.cache, self.console, self.summary, self.reg = cfg, grid, cache, console, summary, reg
        self.out = cache.rows or cfg.output
        need_u = {c.purify_key for c in todo}
        need_p = {grid.purifies[u].protect_key for u in need_u} - {""}
        self.p_meta: dict[str, dict] = {k: cache.meta("protect", k) for k in need_p if cache.has("protect", k)}
        self.u_meta: dict[str, dict] = {k: cache.meta("purify", k) for k in need_u if cache.has("purify", k)}
        self.waiting_u = {k: grid.purifies[k] for k in need_u if k not in self.u_meta}
        self.waiting_c = {c.key: c for c in todo}
        self.queued_p: set[str] = set()  # protect jobs queued or running (a re-queue must not double them)
        self.pools: dict[str, _Pool] = {}
        self.oom_pools: list[_Pool] = []  # whole-GPU pools for CUDA-OOM retries, started on demand
        self.oom_retried: set[tuple[str, str]] = set()  # (stage, key) moved to a whole GPU once already
        self.inflight: dict[Any, tuple[_Pool, int, str, Any]] = {}
        self.started: dict[Any, float] = {}
        self.starting: dict[Any, tuple[_Pool, int, Any, float]] = {}  # ping future -> actor not yet ready
        self.attempts: Counter = Counter()
        self.next_id = 0
        self.start_failures = 0
        self.gave_up: list[str] = []
        self.pending: deque = deque()  # jobs queued before the pools exist
        self.view = _View(cfg.name, len(todo), console)
        self.base = {"tournament": cfg.name, "arena_version": __version__, "torch_version": torch.__version__,
                     "git_sha": _git_sha(), "config_hash": cfg.config_hash()}
        from .versions import code_versions

        self.versions = code_versions(cfg.plugin_modules)
        for k in sorted(need_p - set(self.p_meta)):
            self._queue("protect", grid.protects[k])

    # -- actors ------------------------------------------------------------------------------------
    def _make_pools(self) -> None:
        import ray


        shapes: dict[tuple[float, float], list[str]] = {}
        for st in ("protect", "purify", "train"):
            shapes.setdefault(self.cfg.resources_of(st), []).append(st)
        work = len(self.queued_p) + len(self.waiting_u) + len(self.waiting_c)
        for (cpus, gpus), stages in shapes.items():
            size = min(_check_resources(self.cfg, cpus, gpus, tuple(stages)), max(1, work))
            pool = _Pool(tuple(stages), cpus, gpus, size)
            pool.remote = ray.remote(StageRunner).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
            for st in stages:
                self.pools[st] = pool
        for pool in self._all_pools():
            for _ in range(pool.size):
                self._start_actor(pool)

    def _start_actor(self, pool: _Pool) -> None:
        device = "cuda" if pool.gpus > 0 else "cpu"
        actor = pool.remote.remote(self.cache.uri if self.cache.root is None else str(self.cache.root), device, max(1, int(pool.cpus)),
                                   self.cfg.plugin_modules)
        self.starting[actor.versions.remote()] = (pool, self.next_id, actor, time.perf_counter())
        self.next_id += 1

    def _actor_ready(self, fut: Any) -> None:
        import ray

        pool, aid, actor, _ = self.starting.pop(fut)
        try:
            theirs = ray.get(fut)
        except _infra_errors() as e:  # died while starting: its node went away, or it cannot start at all
            self.start_failures += 1
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            if self.start_failures > 2 * (self.cfg.retries + 1) and not any(p.actors for p in self.pools.values()):
                raise ArenaError(f"no stage actor could start ({self.start_failures} tries): {first}") from None
            self._warn(f"a {'/'.join(pool.stages)} actor died while starting ({type(e).__name__}); starting another")
            self._start_actor(pool)
            return
        from .versions import mismatch

        why = mismatch(self.versions, theirs)
        if why:
            raise ArenaError(f"a Ray worker runs different code than this driver ({why}); install the same arena "
                             "and plugins on every node, or let the runtime_env ship them (see README, cluster)")
        pool.actors[aid] = actor
        pool.idle.append(aid)

    def _replace(self, pool: _Pool, aid: int) -> None:
        import ray

        actor = pool.actors.pop(aid, None)
        if actor is not None:
            try:
                ray.kill(actor)
            except Exception:  # already gone
                pass
        self._start_actor(pool)

    def _check_starting(self) -> None:
        """An actor that cannot be placed waits silently in Ray: stop with the resource it is missing when
        its pool has no actor at all, else drop it (the pool runs with fewer)."""
        import ray

        now = time.perf_counter()
        for fut, (pool, _aid, actor, since) in list(self.starting.items()):
            if now - since < self.cfg.ready_timeout_s:
                continue
            del self.starting[fut]
            try:
                ray.kill(actor)
            except Exception:  # never started
                pass
            if pool.actors:
                continue
            if pool.oom_only:  # no whole GPU came free (fractional actors hold them): retry at the own share
                while pool.ready:
                    stage, job = pool.ready.popleft()
                    self.queued_p.discard(job.key)
                    self._warn(f"{stage} {_job_label(stage, job)}: no whole GPU free within "
                               f"resources.ready_timeout_s; retrying at its own share")
                    self._queue(stage, job, first=True)
                continue
            free = ray.available_resources()
            need = [f"{name}: {want:g} per trial, {free.get(name, 0.0):g} free"
                    for name, want in (("CPU", pool.cpus), ("GPU", pool.gpus)) if want > free.get(name, 0.0) + 1e-9]
            raise ArenaError(f"{self.cfg.path}: no Ray node could start a {'/'.join(pool.stages)} actor within "
                             f"resources.ready_timeout_s = {self.cfg.ready_timeout_s:g} s ("
                             f"{'; '.join(need) or 'resources are free but the actor did not start'}); "
                             "free them, add a node or lower resources")

    # -- the graph -----------------------------------------------------------------------------------
    def _queue(self, stage: str, job: Any, first: bool = False) -> None:
        if stage == "protect":
            if job.key in self.queued_p:
                return
            self.queued_p.add(job.key)
        q = self.pools[stage].ready if self.pools else self.pending
        (q.appendleft if first else q.append)((stage, job))

    def release(self) -> None:
        """Move purify jobs and cells whose inputs are ready (or failed) forward."""
        for k in list(self.waiting_u):
            job = self.waiting_u[k]
            pm = self.p_meta.get(job.protect_key) if job.protect_key else {"status": "ok"}
            if pm is None:
                continue
            del self.waiting_u[k]
            if pm["status"] != "ok":
                self.u_meta[k] = {"status": pm["status"], "error": pm["error"], "metrics": {}, "seconds": 0.0,
                                  "traceback": pm.get("traceback")}
            else:
                self._queue("purify", job)
        for k in list(self.waiting_c):
            cell = self.waiting_c[k]
            um = self.u_meta.get(cell.purify_key)
            if um is None:
                continue
            del self.waiting_c[k]
            if um["status"] != "ok":
                self.emit(cell, {"status": um["status"], "error": um["error"]})
            else:
                self._queue("train", cell, first=True)  # finish rows first: results appear early

    def _all_pools(self) -> list[_Pool]:
        return [*dict.fromkeys(self.pools.values()), *self.oom_pools]

    def submit(self) -> None:
        for pool in self._all_pools():
            while pool.idle and pool.ready:
                aid = pool.idle.popleft()
                stage, job = pool.ready.popleft()
                fut = getattr(pool.actors[aid], stage).remote(job)
                self.inflight[fut] = (pool, aid, stage, job)
                self.started[fut] = time.perf_counter()
                self.view.running[aid] = (f"{stage} {_job_label(stage, job)}", time.perf_counter())

    def finish(self, stage: str, job: Any, res: dict[str, Any]) -> None:
        if res.get("fatal"):  # stored data changed: every row built on it would be wrong
            raise IntegrityError(res["fatal"])
        self.summary.stages[stage] = self.summary.stages.get(stage, 0) + (0 if res.get("cached") else 1)
        if stage == "protect":
            self.queued_p.discard(job.key)
            self.p_meta[job.key] = res
        elif stage == "purify":
            self.u_meta[job.key] = res
        else:
            self.emit(job, res)

    def fault(self, stage: str, job: Any, why: str, missing: list[str] | None = None, oom: bool = False) -> None:
        """An infrastructure fault: run the job again (and first the stage whose file is missing; after CUDA
        out of memory on a GPU fraction, once on a whole GPU), up to ``resources.retries`` times; then leave
        it without a row for the next run."""
        self.attempts[(stage, job.key)] += 1
        if stage == "protect":
            self.queued_p.discard(job.key)
        if self.attempts[(stage, job.key)] > self.cfg.retries:
            self.gave_up.append(f"{stage} {_job_label(stage, job)}: {why}")
            self._warn(f"{stage} {_job_label(stage, job)}: {why}; gave up after {self.cfg.retries + 1} attempts, "
                       "its cells get no row this run (rerun to retry)")
            return
        if oom and self._on_whole_gpu(stage, job):
            self._warn(f"{stage} {_job_label(stage, job)}: {why}; retrying once on a whole GPU")
            return
        self._warn(f"{stage} {_job_label(stage, job)}: {why}; retrying")
        kind, key = (missing or [None, None])[:2]
        if kind == "purify" and key in self.grid.purifies:  # recompute it, then this cell
            self.u_meta.pop(key, None)
            self.waiting_u[key] = self.grid.purifies[key]
            self.waiting_c[job.key] = job
        elif kind == "protect" and key in self.grid.protects:
            self.p_meta.pop(key, None)
            self._queue("protect", self.grid.protects[key])
            self.waiting_u[job.key] = job
        else:
            if kind == "data":  # store the splits again from the driver's fresh copy
                prepare_data(self.cfg, self.cache)
            self._queue(stage, job, first=True)

    def _on_whole_gpu(self, stage: str, job: Any) -> bool:
        """Queue a job that ran out of CUDA memory on a pool with a whole GPU (one of the tournament's own,
        e.g. ``resources.protect: {gpus_per_trial: 1}``, else a one-actor pool started for it), once per job.
        False: it already had its try there, or no larger share exists."""
        import ray

        share = oom_retry_gpus(self.pools[stage].gpus, [n.get("GPU", 0.0) for n in _node_resources()])
        if share is None or (stage, job.key) in self.oom_retried:
            return False
        self.oom_retried.add((stage, job.key))
        pool = next((p for p in dict.fromkeys(self.pools.values()) if p.gpus >= share), None)
        if pool is None:
            if not self.oom_pools:
                cpus = self.pools[stage].cpus
                self.oom_pools.append(_Pool((stage,), cpus, share, 1, oom_only=True))
                self.oom_pools[0].remote = ray.remote(StageRunner).options(num_cpus=cpus, num_gpus=share,
                                                                           max_restarts=0)
            pool = self.oom_pools[0]
            if not pool.actors and not any(p is pool for p, *_ in self.starting.values()):
                self._start_actor(pool)
        if stage == "protect":
            self.queued_p.add(job.key)
        pool.ready.appendleft((stage, job))
        return True

    def _retire_oom_pools(self) -> None:
        """A whole-GPU actor started for OOM retries goes away when it has nothing left to do, so the GPU
        is free for the fractional actors again."""
        import ray

        for pool in self.oom_pools:
            if pool.ready or len(pool.idle) != len(pool.actors):
                continue
            for aid in list(pool.actors):
                try:
                    ray.kill(pool.actors.pop(aid))
                except Exception:  # already gone
                    pass
            pool.idle.clear()

    def emit(self, cell: Cell, result: dict[str, Any]) -> None:
        grid, out = self.grid, self.out
        pm = self.p_meta.get(grid.purifies[cell.purify_key].protect_key, {})
        um = self.u_meta.get(cell.purify_key, {})
        extra = dict(result.get("extra") or {})
        extra.update({k: v for k, v in um.get("metrics", {}).items() if k not in ("purify_psnr", "purify_ssim")})
        if result.get("val_curve"):
            extra["val_curve"] = result["val_curve"]
        if result.get("selected_epoch"):
            extra["selected_epoch"] = result["selected_epoch"]
        row = {
            **self.base, **cell_columns(cell),
            "code_hash": cell.code_hash, "precision": cell.precision,
            **{k: pm.get("metrics", {}).get(k) for k in ("noise_linf", "noise_l2", "patch_area", "psnr", "ssim", "lpips",
                                                         "noise_separability", "noise_class_share",
                                                         "budget_kind", "budget_value")},
            "protect_info": json.dumps(pm["info"], sort_keys=True) if pm.get("info") else None,
            "weak": is_weak(pm.get("info")),
            "traceback": result.get("traceback") or pm.get("traceback") or um.get("traceback"),
            "purify_psnr": um.get("metrics", {}).get("purify_psnr"),
            "purify_ssim": um.get("metrics", {}).get("purify_ssim"),
            "protect_s": pm.get("seconds"), "purify_s": um.get("seconds"),
            **{k: v for k, v in result.items()
               if k not in ("extra", "val_curve", "selected_epoch", "traceback", "cached")},
            "robust_acc": extra.pop("robust_acc", None), "extra": extra or None,
            "finished_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        }
        if row["status"] == "ok" and not (isinstance(row.get("clean_acc"), float) and math.isfinite(row["clean_acc"])):
            row["status"], row["error"] = "failed", "train: no accuracy recorded"
        write_row(out, row)
        for line in self.reg.cell_finished(row):
            self.console.print(f"[yellow]warning[/yellow]: {line} (cell {cell.label()}; skipped)")
        self.view.done += 1
        self.view.counts[row["status"]] += 1
        self.summary.statuses[row["status"]] += 1

    def _warn(self, line: str) -> None:
        self.console.print(f"[yellow]warning[/yellow]: {line}", highlight=False, soft_wrap=True)

    # -- the loop ----------------------------------------------------------------------------------
    def _hung(self) -> None:
        """A plugin that never returns: replace its actor and fail its job (the stage timeout is a
        plugin's fault, so it is final)."""
        now = time.perf_counter()
        for fut, (pool, aid, stage, job) in list(self.inflight.items()):
            limit = self.cfg.timeout_s[stage]
            if now - self.started[fut] <= limit:
                continue
            self.inflight.pop(fut)
            self.started.pop(fut, None)
            self.view.running.pop(aid, None)
            self._replace(pool, aid)
            self.finish(stage, job, {"status": "failed", "metrics": {}, "seconds": limit,
                                     "error": f"{stage}: timed out after {limit:g} s (resources.timeout_s)"})

    def _stage_done(self, fut: Any) -> None:
        import ray

        pool, aid, stage, job = self.inflight.pop(fut)
        self.started.pop(fut, None)
        self.view.running.pop(aid, None)
        try:
            res = ray.get(fut)
        except _infra_errors() as e:
            self._replace(pool, aid)
            first = (str(e).strip().splitlines() or [""])[0][:160]
            self.fault(stage, job, f"worker lost ({type(e).__name__}: {first})")
            return
        pool.idle.append(aid)
        if res.get("infra"):
            self.fault(stage, job, res["infra"], res.get("missing"), oom=bool(res.get("oom")))
        else:
            self.finish(stage, job, res)

    def _busy(self) -> bool:
        return bool(self.inflight) or any(p.ready for p in self._all_pools())

    def run(self, live: bool) -> None:
        import ray
        from rich.live import Live

        self._make_pools()
        for stage, job in self.pending:
            self.pools[stage].ready.append((stage, job))
        self.pending.clear()
        try:
            with Live(self.view, console=self.console, refresh_per_second=2, transient=False) if live else _Null():
                self.release()
                self.submit()
                while self._busy():
                    futs = list(self.inflight) + list(self.starting)
                    done, _ = ray.wait(futs, num_returns=1, timeout=2.0)
                    if not done:
                        self._hung()
                        self._check_starting()
                    elif done[0] in self.starting:
                        self._actor_ready(done[0])
                    else:
                        self._stage_done(done[0])
                    self.release()
                    self.submit()
                    self._retire_oom_pools()
        finally:
            for pool in self._all_pools():
                for act in [*pool.actors.values(), *(a for p, _, a, _ in self.starting.values() if p is pool)]:
                    try:
                        ray.kill(act)
                    except Exception:  # shutting down: nothing useful to do
                        pass
        self.summary.unfinished = len(self.waiting_c) + sum(
            1 for p in self._all_pools() for st, _ in p.ready if st == "train")


def run_tournament(cfg: TournamentConfig, *, address: str | None = None, retry_failed: bool = False,
                   live: bool = True, console: Any = None) -> Summary:
    """Run every unfinished cell of ``cfg``; only one driver at a time per output directory."""
    from rich.console import Console

    console = console or Console(stderr=True)
    warn = lambda line: console.print(f"[yellow]warning[/yellow]: {line}", highlight=False, soft_wrap=True)  # noqa: E731
    store = Storage(cfg.rows_at)
    with DriverLock(store.local_path or cfg.output, warn=warn):
        return _run(cfg, store, address=address, retry_failed=retry_failed, live=live, console=console)


def _check_storage(cfg: TournamentConfig, store: Storage) -> None:
    """Actors on another node cannot see this machine's disk: refuse before any stage runs."""
    nodes = _node_resources()
    if len(nodes) > 1 and store.is_local and not cfg.rows_at.startswith("file://"):
        raise ConfigError(f"{cfg.path}: storage {store.uri} is a path on this machine and the Ray cluster has "
                          f"{len(nodes)} nodes: set storage (or --storage) to a URI every node reaches (s3://bucket/dir, "
                          "gs://, hdfs://) or a shared mount written as file:///path")


def _local_splits(cache: StageCache, data_keys: dict[int, str], tmp: Path) -> dict[int, Path]:
    """Local copies of the train splits for the driver's own use (the precision probe reads their
    shape); with local storage they are the stored files themselves."""
    if cache.root is not None:
        return {i: cache.data_dir(k) for i, k in data_keys.items()}
    out = {}
    for i, k in data_keys.items():
        (tmp / k).mkdir(parents=True, exist_ok=True)
        (tmp / k / "train.npz").write_bytes(cache.store.read_bytes(f"data/{k}/train.npz"))
        out[i] = tmp / k
    return out


def _run(cfg: TournamentConfig, store: Storage, *, address: str | None, retry_failed: bool, live: bool,
         console: Any) -> Summary:
    import tempfile

    t_start = time.perf_counter()
    reg = get_registry()
    cache = StageCache(store.child(".cache"))
    cache.rows = store
    data_keys = prepare_data(cfg, cache)
    with tempfile.TemporaryDirectory(prefix="arena-splits-") as tmp:
        amp = resolve_precision(cfg, _local_splits(cache, data_keys, Path(tmp)))
    grid: Grid = expand(cfg, data_keys, reg, amp=amp)
    keep = ("ok",) if retry_failed else None
    for line in move_aside_bad_rows(store):  # a corrupt row would otherwise count as finished forever
        console.print(f"warning: {line}", highlight=False, soft_wrap=True)
    done = finished_keys(store, keep)
    todo = [c for k, c in grid.cells.items() if k not in done]
    summary = Summary(cfg.name, len(grid.cells), len(grid.cells) - len(todo), len(todo), naive=grid.naive_counts(),
                      output=store.local_path or store.uri)
    if todo:
        _init_ray(address, cfg)
        _check_storage(cfg, store)
        TournamentDriver(cfg, grid, cache, todo, console, summary, reg).run(live)
    summary.seconds = time.perf_counter() - t_start
    return summary


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
