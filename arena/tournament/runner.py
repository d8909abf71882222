"""Run a tournament on Ray: long-lived stage actors, dependency-driven scheduling, rows as cells finish.

Why actors and not one task per stage: an actor imports torch and the plugins once, keeps the loaded
splits (on the GPU when it has one) between cells, and holds a fixed, fractional share of a GPU, so
several small trainings pack onto one device. Only cache keys and small dicts cross Ray; images stay on
disk under content keys.
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
from ..commands.common import load_splits
from ..diagnostics import is_weak
from ..integrity import IntegrityError
from ..leaderboard import finished_keys, move_aside_bad_rows, write_row
from ..params import ArenaError
from ..registry import get_registry
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
    output: Path = Path(".")

    def line(self) -> str:
        st = ", ".join(f"{v} {k}" for k, v in sorted(self.statuses.items())) or "nothing new"
        return (f"{self.name}: {self.cells} cells, {self.skipped} already finished, {self.ran} run ({st}) in "
                f"{self.seconds:.0f} s; stages computed: {self.stages.get('protect', 0)} protect, "
                f"{self.stages.get('purify', 0)} purify, {self.stages.get('train', 0)} train; rows in {self.output}")


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


def _init_ray(address: str | None, cfg: TournamentConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"PYTHONPATH": os.pathsep.join([os.getcwd(), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])}
    for var in ("ARENA_PLUGINS", "ARENA_DISABLE_PLUGIN_AUTOLOAD", "ARENA_CACHE", "ARENA_DATA"):
        if var in os.environ:
            env[var] = os.environ[var]
    flag = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=bool(os.environ.get("ARENA_RAY_LOG")),
                                  logging_level=logging.ERROR, runtime_env={"env_vars": env})
    if address and address != "local":
        _check_ray_address(address, flag)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ArenaError(f"{flag} {address}: cannot join the Ray cluster: {first}") from None
    else:
        ray.init(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(),
                 object_store_memory=256 * 1024 * 1024, **kwargs)


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


def _check_resources(cfg: TournamentConfig) -> int:
    """How many stage actors fit; a request the cluster can never satisfy is a config error."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    if cfg.cpus_per_trial > cpus:
        raise ConfigError(f"{cfg.path}: resources.cpus_per_trial = {cfg.cpus_per_trial:g}: the Ray cluster has {cpus:g} CPUs")
    if cfg.gpus_per_trial > gpus:
        raise ConfigError(f"{cfg.path}: resources.gpus_per_trial = {cfg.gpus_per_trial:g}: the Ray cluster has "
                          f"{gpus:g} GPUs (use 0 for CPU)")
    n = math.floor(cpus / cfg.cpus_per_trial + 1e-9)
    if cfg.gpus_per_trial > 0:
        n = min(n, math.floor(gpus / cfg.gpus_per_trial + 1e-9))
    return max(1, min(n, cfg.max_concurrent or n))


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


def run_tournament(cfg: TournamentConfig, *, address: str | None = None, retry_failed: bool = False,
                   live: bool = True, console: Any = None) -> Summary:
    """Run every unfinished cell of ``cfg``; only one driver at a time per output directory."""
    from rich.console import Console

    console = console or Console(stderr=True)
    warn = lambda line: console.print(f"[yellow]warning[/yellow]: {line}", highlight=False, soft_wrap=True)  # noqa: E731
    with DriverLock(cfg.output, warn=warn):
        return _run(cfg, address=address, retry_failed=retry_failed, live=live, console=console)


def _run(cfg: TournamentConfig, *, address: str | None, retry_failed: bool, live: bool, console: Any) -> Summary:
    import ray
    from rich.live import Live

    t_start = time.perf_counter()
    reg = get_registry()
    out = cfg.output
    cache = StageCache(out / ".cache")
    data_keys = prepare_data(cfg, cache)
    amp = resolve_precision(cfg, {i: cache.data_dir(k) for i, k in data_keys.items()})
    grid: Grid = expand(cfg, data_keys, reg, amp=amp)
    keep = ("ok",) if retry_failed else None
    for line in move_aside_bad_rows(out):  # a corrupt row would otherwise count as finished forever
        console.print(f"warning: {line}", highlight=False, soft_wrap=True)
    done = finished_keys(out, keep)
    todo = [c for k, c in grid.cells.items() if k not in done]
    summary = Summary(cfg.name, len(grid.cells), len(grid.cells) - len(todo), len(todo), naive=grid.naive_counts(),
                      output=out)
    if not todo:
        summary.seconds = time.perf_counter() - t_start
        return summary

    _init_ray(address, cfg)
    n_actors = _check_resources(cfg)
    need_u = {c.purify_key for c in todo}
    need_p = {grid.purifies[u].protect_key for u in need_u} - {""}
    p_meta: dict[str, dict] = {k: cache.meta("protect", k) for k in need_p if cache.has("protect", k)}
    u_meta: dict[str, dict] = {k: cache.meta("purify", k) for k in need_u if cache.has("purify", k)}
    ready: deque = deque(("protect", grid.protects[k]) for k in sorted(need_p) if k not in p_meta)
    waiting_u = {k: grid.purifies[k] for k in need_u if k not in u_meta}
    waiting_c = {c.key: c for c in todo}
    n_actors = min(n_actors, len(ready) + len(waiting_u) + len(waiting_c))

    device = "cuda" if cfg.gpus_per_trial > 0 else "cpu"
    threads = max(1, int(cfg.cpus_per_trial))
    Remote = ray.remote(StageRunner).options(num_cpus=cfg.cpus_per_trial, num_gpus=cfg.gpus_per_trial, max_restarts=0)

    def new_actor() -> Any:
        return Remote.remote(str(cache.root), device, threads, cfg.plugin_modules)

    actors = {i: new_actor() for i in range(n_actors)}
    idle = deque(actors)
    inflight: dict[Any, tuple[int, str, Any]] = {}
    started: dict[Any, float] = {}  # when each in-flight stage was submitted (stage timeouts)
    attempts: Counter = Counter()
    view = _View(cfg.name, len(todo), console)
    git_sha = _git_sha()
    base = {"tournament": cfg.name, "arena_version": __version__, "torch_version": torch.__version__,
            "git_sha": git_sha, "config_hash": cfg.config_hash()}

    def emit(cell: Cell, result: dict[str, Any]) -> None:
        pm = p_meta.get(grid.purifies[cell.purify_key].protect_key, {})
        um = u_meta.get(cell.purify_key, {})
        extra = dict(result.get("extra") or {})
        extra.update({k: v for k, v in um.get("metrics", {}).items() if k not in ("purify_psnr", "purify_ssim")})
        if result.get("val_curve"):
            extra["val_curve"] = result["val_curve"]
        if result.get("selected_epoch"):
            extra["selected_epoch"] = result["selected_epoch"]
        row = {
            **base, **cell_columns(cell),
            "code_hash": cell.code_hash, "precision": cell.precision,
            **{k: pm.get("metrics", {}).get(k) for k in ("noise_linf", "noise_l2", "patch_area", "psnr", "ssim", "lpips",
                                                         "noise_separability", "budget_kind", "budget_value")},
            "protect_info": json.dumps(pm["info"], sort_keys=True) if pm.get("info") else None,
            "weak": is_weak(pm.get("info")),
            "traceback": result.get("traceback") or pm.get("traceback") or um.get("traceback"),
            "purify_psnr": um.get("metrics", {}).get("purify_psnr"),
            "purify_ssim": um.get("metrics", {}).get("purify_ssim"),
            "protect_s": pm.get("seconds"), "purify_s": um.get("seconds"),
            **{k: v for k, v in result.items() if k not in ("extra", "val_curve", "selected_epoch", "traceback")},
            "robust_acc": extra.pop("robust_acc", None), "extra": extra or None,
            "finished_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        }
        if row["status"] == "ok" and not (isinstance(row.get("clean_acc"), float) and math.isfinite(row["clean_acc"])):
            row["status"], row["error"] = "failed", "train: no accuracy recorded"
        write_row(out, row)
        for line in reg.cell_finished(row):
            console.print(f"[yellow]warning[/yellow]: {line} (cell {cell.label()}; skipped)")
        view.done += 1
        view.counts[row["status"]] += 1
        summary.statuses[row["status"]] += 1

    def release() -> None:
        """Move purify jobs and cells whose inputs are ready (or failed) forward."""
        for k in list(waiting_u):
            job = waiting_u[k]
            pm = p_meta.get(job.protect_key) if job.protect_key else {"status": "ok"}
            if pm is None:
                continue
            del waiting_u[k]
            if pm["status"] != "ok":
                u_meta[k] = {"status": pm["status"], "error": pm["error"], "metrics": {}, "seconds": 0.0}
            else:
                ready.append(("purify", job))
        for k in list(waiting_c):
            cell = waiting_c[k]
            um = u_meta.get(cell.purify_key)
            if um is None:
                continue
            del waiting_c[k]
            if um["status"] != "ok":
                emit(cell, {"status": um["status"], "error": um["error"]})
            else:
                ready.appendleft(("train", cell))  # finish rows first: results appear early

    def submit() -> None:
        while idle and ready:
            a = idle.popleft()
            stage, job = ready.popleft()
            fut = getattr(actors[a], stage).remote(job)
            inflight[fut] = (a, stage, job)
            started[fut] = time.perf_counter()
            label = job.label() if isinstance(job, Cell) else (
                f"{job.protector.name} s{job.seed}" if isinstance(job, ProtectJob) else
                f"{job.exploiter.label if job.exploiter.parts else 'pass-through'} r={job.poison_ratio:g}"
                if isinstance(job, PurifyJob) else "")
            view.running[a] = (f"{stage} {label}", time.perf_counter())

    def finish(stage: str, job: Any, res: dict[str, Any]) -> None:
        if res.get("fatal"):  # stored data changed: every row built on it would be wrong
            raise IntegrityError(res["fatal"])
        summary.stages[stage] = summary.stages.get(stage, 0) + (0 if res.get("cached") else 1)
        if stage == "protect":
            p_meta[job.key] = res
        elif stage == "purify":
            u_meta[job.key] = res
        else:
            emit(job, res)

    try:
        with Live(view, console=console, refresh_per_second=2, transient=False) if live else _Null():
            release()
            submit()
            while inflight:
                ready_futs, _ = ray.wait(list(inflight), num_returns=1, timeout=5.0)
                if not ready_futs:
                    hung = [(f, a, st, j) for f, (a, st, j) in inflight.items()
                            if time.perf_counter() - started[f] > cfg.timeout_s[st]]
                    for fut, a, stage, job in hung:  # a plugin that never returns: replace its actor
                        inflight.pop(fut)
                        view.running.pop(a, None)
                        try:
                            ray.kill(actors[a])
                        except Exception:  # already gone
                            pass
                        actors[a] = new_actor()
                        idle.append(a)
                        finish(stage, job, {"status": "failed", "metrics": {}, "seconds": cfg.timeout_s[stage],
                                            "error": f"{stage}: timed out after {cfg.timeout_s[stage]:g} s "
                                                     f"(resources.timeout_s)"})
                    if hung:
                        release()
                        submit()
                    continue
                fut = ready_futs[0]
                a, stage, job = inflight.pop(fut)
                started.pop(fut, None)
                view.running.pop(a, None)
                try:
                    res = ray.get(fut)
                    idle.append(a)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as e:
                    try:
                        ray.kill(actors[a])
                    except Exception:  # the actor is already gone
                        pass
                    actors[a] = new_actor()
                    idle.append(a)
                    attempts[(stage, getattr(job, "key", None))] += 1
                    if attempts[(stage, job.key)] <= cfg.retries:
                        ready.appendleft((stage, job))
                        submit()
                        continue
                    res = {"status": "failed", "error": f"{stage}: worker crashed {cfg.retries + 1} times "
                                                        f"({type(e).__name__})", "metrics": {}, "seconds": 0.0}
                finish(stage, job, res)
                release()
                submit()
    finally:
        for act in actors.values():
            try:
                ray.kill(act)
            except Exception:  # shutting down: nothing useful to do
                pass
    summary.seconds = time.perf_counter() - t_start
    return summary


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None

