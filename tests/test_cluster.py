"""Running as on a cluster: one driver per directory, resources that fit a node, faults that retry,
storage behind a URI, two Ray nodes. Real processes, real Ray, a real S3-compatible server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from arena.tournament.lock import LOCK_NAME
from tests.cli_runner import run_cli
from tests.cluster_fixtures import TINY as CLUSTER_TINY
from tests.cluster_fixtures import s3_server  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]

# Ray tests run one after another on one xdist worker (see tests/conftest.py): one embedded Ray at a time.
pytestmark = pytest.mark.xdist_group("ray")


TINY = CLUSTER_TINY


def _write(tmp: Path, cfg: dict, name: str = "t.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _arena(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # tests/cli_runner.py's forking server, not a fresh interpreter: no call here needs one (none is killed or
    # held from outside, none joins a Ray cluster of its own; the lock holder below is a process of its own)
    return run_cli(list(args), cwd=ROOT, timeout=timeout)


def _own_lines(stderr: str) -> list[str]:
    """stderr without the registry's lines about entry points whose module another branch adds."""
    return [ln for ln in stderr.strip().splitlines() if not ln.startswith("warning: plugin '")]


def test_a_second_driver_on_one_directory_is_refused_and_a_dead_ones_lock_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = _write(tmp_path, {**TINY, "output": str(out)})
    # the lock's holder is a process of its own, held open while the second driver is refused
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom arena.tournament.lock import DriverLock\n"
         f"with DriverLock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = _arena("tournament", str(path), "--no-live", "--dry-run")
        assert second.returncode == 0, "a dry run writes nothing and needs no lock"
        second = _arena("tournament", str(path), "--no-live")
        lines = _own_lines(second.stderr)
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"pid {holder.pid} on host {socket.gethostname()}" in lines[0]
        assert not list(out.glob("cell-*")) and not (out / ".cache").exists(), "the refused driver ran nothing"
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock names a pid that is gone, so the next driver takes over
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    from arena.tournament.lock import DriverLock

    warnings: list[str] = []
    with DriverLock(out, warn=warnings.append):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] != holder.pid
    assert len(warnings) == 1 and "no longer running" in warnings[0] and str(holder.pid) in warnings[0]
    assert not (out / LOCK_NAME).exists(), "released on exit"


def test_a_request_no_node_can_hold_is_one_line_before_anything_runs(tmp_path: Path, ray_local) -> None:
    from arena.tournament.config import ConfigError, load_config
    from arena.tournament.runner import run_tournament

    cfg = load_config(_write(tmp_path, {**TINY, "output": str(tmp_path / "o"),
                                        "resources": {"cpus_per_trial": 1, "protect": {"gpus_per_trial": 1}}}))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        run_tournament(cfg, live=False)
    msg = str(e.value)
    assert "\n" not in msg and "resources (protect).gpus_per_trial = 1: the Ray cluster has 0 GPUs" in msg, msg
    assert time.perf_counter() - t0 < 60 and not list((tmp_path / "o").glob("cell-*"))


def test_an_actor_that_cannot_be_placed_stops_the_run_naming_the_resource(tmp_path: Path, ray_local) -> None:
    """Resources exist in the cluster but are held by someone else: the actor waits; the run does not."""
    import ray

    from arena.params import ArenaError
    from arena.tournament.config import load_config
    from arena.tournament.runner import run_tournament

    cpus = ray.cluster_resources()["CPU"]
    from tests.cluster_plugins import Hog

    hog = ray.remote(num_cpus=cpus)(Hog).remote()
    ray.get(hog.ping.remote())
    try:
        cfg = load_config(_write(tmp_path, {**TINY, "output": str(tmp_path / "o"),
                                            "resources": {"cpus_per_trial": 1, "ready_timeout_s": 2}}))
        with pytest.raises(ArenaError) as e:
            run_tournament(cfg, live=False)
    finally:
        ray.kill(hog)
    msg = str(e.value)
    assert "\n" not in msg and "CPU: 1 per trial, 0 free" in msg and "ready_timeout_s = 2" in msg, msg


@pytest.mark.parametrize("resources,needle", [
    ({"train": {"gpu": 1}}, "resources.train.gpu = 1: expected a known key; valid keys: cpus_per_trial, gpus_per_trial"),
    ({"protect": 2}, "resources.protect = 2: expected a mapping"),
    ({"purify": {"cpus_per_trial": 0}}, "resources.purify.cpus_per_trial = 0: expected float > 0.0"),
    ({"ready_timeout_s": -1}, "resources.ready_timeout_s = -1: expected float > 0.0"),
])
def test_per_stage_resources_are_validated_in_one_line(tmp_path: Path, resources: dict, needle: str) -> None:
    from arena.tournament.config import ConfigError, load_config

    path = _write(tmp_path, {**TINY, "resources": resources})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "\n" not in str(e.value) and needle in str(e.value), str(e.value)


def test_per_stage_resources_default_to_the_trial_ones(tmp_path: Path) -> None:
    from arena.tournament.config import load_config

    cfg = load_config(_write(tmp_path, {**TINY, "resources": {"cpus_per_trial": 2, "protect": {"gpus_per_trial": 1}}}))
    assert cfg.resources_of("protect") == (2.0, 1.0) and cfg.resources_of("train") == (2.0, 0.0)


def test_a_worker_killed_mid_run_is_retried_and_every_cell_gets_one_row(tmp_path: Path, ray_local) -> None:
    """The dying protector kills its actor's process once: that cell is retried on a new actor and ends
    ``ok``; the raising plugin's row stays ``failed`` and keeps its traceback."""
    from arena.leaderboard import read_rows
    from arena.tournament.config import load_config
    from arena.tournament.runner import run_tournament

    cfg = load_config(_write(tmp_path, {**TINY, "output": str(tmp_path / "o"),
                                        "plugins": ["tests.arena_test_plugins", "tests.cluster_plugins"],
                                        "protectors": ["none", "test-dies-once", "test-boom"]}))
    s = run_tournament(cfg, live=False)
    rows = read_rows(tmp_path / "o")
    assert sorted(r["protector"] for r in rows) == ["none", "test-boom", "test-dies-once"], "one row per cell"
    by = {r["protector"]: r for r in rows}
    assert by["test-dies-once"]["status"] == "ok" and by["none"]["status"] == "ok"
    assert (tmp_path / "o" / ".plugins" / "scratch" / "test-dies-once" / "died-once").exists(), "it did die once"
    assert by["test-boom"]["status"] == "failed" and "RuntimeError: boom" in by["test-boom"]["traceback"]
    assert s.unfinished == 0 and s.statuses == {"ok": 2, "failed": 1}


def test_a_tournament_on_s3_storage_leaves_nothing_on_the_driver_and_reads_back_from_the_uri(
        tmp_path: Path, s3_server, ray_local) -> None:  # noqa: F811
    import boto3

    from arena.tournament.config import load_config
    from arena.tournament.runner import run_tournament

    query, endpoint = s3_server
    uri = f"s3://arena/runs/c?{query}"
    out = tmp_path / "out"
    cfg = load_config(_write(tmp_path, {**TINY, "output": str(out)}), storage=uri)
    s = run_tournament(cfg, live=False)
    assert s.statuses == {"ok": 2} and s.output == uri
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
        Bucket="arena", Prefix="runs/c/")["Contents"]]
    rows = [k for k in keys if k.startswith("runs/c/cell-")]
    assert len(rows) == 2, keys
    assert any(k.startswith("runs/c/.cache/data/") for k in keys), "the splits go to the storage"
    assert sum(k.startswith("runs/c/.cache/protect/") and k.endswith(".npz") for k in keys) == 2
    assert not (out / ".cache").exists() and not list(out.rglob("cell-*")), "nothing on the driver's disk"
    again = run_tournament(cfg, live=False)
    assert again.ran == 0 and again.skipped == 2, "reruns find their rows in the storage"
    board = _arena("leaderboard", uri, "--json", timeout=120)
    assert board.returncode == 0, board.stderr
    assert json.loads(board.stdout)["rows"] == 2
    missing = _arena("leaderboard", f"s3://no-such-bucket/x?{query}", timeout=120)
    assert missing.returncode == 2, missing.stderr  # no bucket: one line, no traceback
    assert len(_own_lines(missing.stderr)) == 1, missing.stderr

    # the grid view and the integrity check read the same URI
    graded = _arena("leaderboard", uri, "--json", "--tournament", str(tmp_path / "t.yaml"), timeout=120)
    assert graded.returncode == 0, graded.stderr
    assert json.loads(graded.stdout)["rows"] == 2
    s3 = boto3.client("s3", endpoint_url=endpoint)
    sidecars = [k for k in keys if k.startswith(("runs/c/.cache/protect/", "runs/c/.cache/purify/")) and k.endswith(".json")]
    (manifest,) = [k for k in keys if k.startswith("runs/c/.cache/data/") and k.endswith("manifest.json")]
    n_splits = len(json.loads(s3.get_object(Bucket="arena", Key=manifest)["Body"].read())["hashes"])
    ok = _arena("verify", uri, timeout=120)
    assert ok.returncode == 0 and f"{len(sidecars) + n_splits} stored files checked, 0 bad" in ok.stdout, ok.stdout + ok.stderr
    victim = next(k for k in keys if k.startswith("runs/c/.cache/protect/") and k.endswith(".npz"))
    s3.put_object(Bucket="arena", Key=victim, Body=b"not an npz")
    bad = _arena("verify", uri, timeout=120)
    assert bad.returncode == 1 and bad.stdout.count("\n") == 1, bad.stdout + bad.stderr
    assert f"s3://arena/{victim}: unreadable" in bad.stdout, bad.stdout


def test_the_driver_recomputes_a_missing_input_before_retrying_and_gives_up_without_a_row(tmp_path: Path) -> None:
    """The scheduler's graph logic on its own, without Ray: a train job whose purified input is not in the
    storage sends that purify job (and only it) back; retries run out into no row, never a failed one."""
    from rich.console import Console

    from arena.registry import get_registry
    from arena.tournament.config import load_config
    from arena.tournament.grid import expand
    from arena.tournament.runner import Summary, TournamentDriver, prepare_data
    from arena.tournament.stagecache import StageCache

    cfg = load_config(_write(tmp_path, {**TINY, "output": str(tmp_path / "o"), "resources": {"retries": 1}}))
    cache = StageCache(tmp_path / "o" / ".cache")
    grid = expand(cfg, prepare_data(cfg, cache), get_registry())
    todo = list(grid.cells.values())
    console = Console(record=True, width=300)
    d = TournamentDriver(cfg, grid, cache, todo, console, Summary("c", len(todo), 0, len(todo)), get_registry())
    assert {j.key for _, j in d.pending} == set(grid.protects), "protect jobs first, each once"
    for _, job in list(d.pending):
        d.finish("protect", job, {"status": "ok", "metrics": {}, "seconds": 0.0})
    d.pending.clear()
    d.release()
    purifies = [j for st, j in d.pending if st == "purify"]
    assert len(purifies) == len(grid.purifies) and not d.waiting_u
    for job in purifies:
        d.finish("purify", job, {"status": "ok", "metrics": {}, "seconds": 0.0})
    d.pending.clear()
    d.release()
    cell = next(j for st, j in d.pending if st == "train")
    d.pending.clear()
    d.fault("train", cell, "the purify output is not in the stage storage", ["purify", cell.purify_key])
    assert cell.purify_key not in d.u_meta and d.waiting_u == {cell.purify_key: grid.purifies[cell.purify_key]}
    assert d.waiting_c == {cell.key: cell}
    d.fault("train", cell, "worker lost")  # the second fault: retries (1) are used up
    assert "gave up after 2 attempts" in console.export_text() and d.summary.statuses == {}
    assert not list((tmp_path / "o").glob("cell-*")), "no row for an infrastructure fault"


def test_each_stage_key_names_the_device_kind_of_its_own_resources(tmp_path: Path) -> None:
    """A GPU for protect alone moves the protect keys (and, through them, everything downstream); a GPU for
    train alone leaves the protect and purify keys as they were and moves only the cells."""
    from arena.registry import get_registry
    from arena.tournament.config import load_config
    from arena.tournament.grid import expand

    def grid(resources: dict) -> tuple[set, set, set]:
        g = expand(load_config(_write(tmp_path, {**TINY, "resources": resources})), {0: "d"}, get_registry())
        return set(g.protects), set(g.purifies), set(g.cells)

    cpu = grid({"cpus_per_trial": 1})
    assert grid({"cpus_per_trial": 1, "protect": {"cpus_per_trial": 2}}) == cpu, "CPU counts are not in the keys"
    gpu_protect = grid({"cpus_per_trial": 1, "protect": {"gpus_per_trial": 1}})
    assert not gpu_protect[0] & cpu[0] and not gpu_protect[2] & cpu[2]
    gpu_train = grid({"cpus_per_trial": 1, "train": {"gpus_per_trial": 0.5}})
    assert gpu_train[:2] == cpu[:2] and not gpu_train[2] & cpu[2]
    on_gpu = grid({"gpus_per_trial": 0.5})
    assert not on_gpu[0] & cpu[0] and on_gpu[2] != gpu_train[2]
    assert grid({"gpus_per_trial": 0.5, "train": {"gpus_per_trial": 0.25}}) == on_gpu, "a share is not a device kind"


@pytest.mark.parametrize("gpus,nodes,share", [
    (0.25, [1.0], 1.0),  # a fraction, and a node with a whole GPU: one retry there
    (0.5, [0.0, 2.0], 1.0),  # the whole GPU may be on another node
    (0.5, [0.0], None),  # no node has a whole GPU: retry at the own share
    (1.0, [8.0], None),  # already a whole GPU: nothing larger to give
    (0.0, [1.0], None),  # a CPU stage never ran out of CUDA memory
])
def test_cuda_oom_retries_on_a_whole_gpu_only_when_it_had_a_fraction_and_one_exists(gpus, nodes, share) -> None:
    """The decision alone: the move itself needs GPUs, which the test machine has none of."""
    from arena.tournament.runner import oom_retry_gpus

    assert oom_retry_gpus(gpus, nodes) == share
