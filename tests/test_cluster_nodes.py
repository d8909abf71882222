"""A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a worker node,
one CPU each), a driver joining it with ``--address`` as on a cluster, and storage on a local S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cli_runner import run_cli
from tests.cluster_fixtures import TINY as CLUSTER_TINY
from tests.cluster_fixtures import s3_server  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]

# Ray tests run one after another on one xdist worker (see tests/conftest.py): one embedded Ray at a time.
pytestmark = pytest.mark.xdist_group("ray")

TINY = {**CLUSTER_TINY, "name": "nodes"}


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    cluster.shutdown()


def _arena(*args: str, timeout: float = 400, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # A real interpreter, not tests/cli_runner.py: these tournament drivers join a multi-node Ray cluster, and
    # one runs from a decoy project whose ``plugins`` package must not shadow the built-ins in a fresh process.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "arena.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _decoy(tmp: Path) -> Path:
    """A user's project with its own ``plugins`` package that breaks on import: the driver runs from it,
    so it is first on the driver's and every worker's path (runner._init_ray)."""
    (tmp / "project" / "plugins").mkdir(parents=True)
    (tmp / "project" / "plugins" / "__init__.py").write_text("raise ImportError('the decoy plugins was imported')\n")
    return tmp / "project"


def _own_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.strip().splitlines() if not ln.startswith("warning: plugin '")]


def _write(tmp: Path, cfg: dict) -> Path:
    p = tmp / "t.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_two_nodes_with_s3_storage_every_cell_ok_and_a_local_path_refused(
        tmp_path: Path, two_nodes, s3_server) -> None:  # noqa: F811
    """Run from a project whose own ``plugins`` package would shadow a top-level ``plugins`` in workers."""
    cluster, _ = two_nodes
    query, _ = s3_server
    path = _write(tmp_path, {**TINY, "output": str(tmp_path / "out")})
    refused = _arena("tournament", str(path), "--no-live", "--address", cluster.address)
    lines = _own_lines(refused.stderr)
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "is a path on this machine and the Ray cluster has 2 nodes" in lines[0]
    assert not list((tmp_path / "out").rglob("cell-*")), "refused before any stage ran"
    uri = f"s3://arena/nodes?{query}"
    run = _arena("tournament", str(path), "--no-live", "--address", cluster.address, "--storage", uri,
                 cwd=_decoy(tmp_path))
    assert "decoy" not in run.stderr, run.stderr[-2000:]
    assert run.returncode == 0, run.stderr[-2000:]
    # reading the storage joins no cluster and imports no user plugins: tests/cli_runner.py's forking server
    board = run_cli(["leaderboard", uri, "--json"], cwd=ROOT, timeout=120)
    assert board.returncode == 0, board.stderr
    from arena.leaderboard import read_rows

    rows = read_rows(uri)
    assert len(rows) == 2 and len({r["cell_key"] for r in rows}) == 2 and all(r["status"] == "ok" for r in rows)
    assert json.loads(board.stdout)["rows"] == 2


def test_a_worker_node_lost_mid_run_every_cell_still_ends_with_one_row(tmp_path: Path, two_nodes) -> None:
    """The worker node goes away while the grid runs: its stage is retried on the head node."""
    cluster, worker = two_nodes
    store = tmp_path / "shared"  # one machine: a path every node sees, declared shared as file://
    cfg = {**TINY, "protectors": ["none", "classwise-noise", "classwise-patch"], "seeds": [0, 1],
           "recipe": {"epochs": 2, "batch_size": 64}, "output": str(tmp_path / "out")}
    path = _write(tmp_path, cfg)
    # a real interpreter: the driver keeps running while a node is taken away under it
    proc = subprocess.Popen([sys.executable, "-m", "arena.cli", "tournament", str(path), "--no-live", "--address",
                             cluster.address, "--storage", store.as_uri()], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(store.glob("cell-*.parquet")) and proc.poll() is None:
        time.sleep(0.2)
    rows_at_kill = len(list(store.glob("cell-*.parquet")))
    assert proc.poll() is None and rows_at_kill < 6, "the node must go away while the grid still runs"
    cluster.remove_node(worker, allow_graceful=False)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    from arena.leaderboard import read_rows

    rows = read_rows(store)
    assert len(rows) == 6 and len({r["cell_key"] for r in rows}) == 6, "every cell exactly one row"
    assert all(r["status"] == "ok" for r in rows), [(r["protector"], r["error"]) for r in rows]
