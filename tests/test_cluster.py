"""Running as on a cluster: one driver per directory, resources that fit a node, faults that retry,
storage behind a URI, two Ray nodes. Real processes, real Ray, a real S3-compatible server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from arena.tournament.lock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "c",
    "datasets": [{"name": "digits", "params": {"size": 16}, "train": 120, "test": 60}],
    "protectors": ["none", "classwise-noise"],
    "exploiters": ["none"],
    "architectures": ["cnn-small"],
    "recipe": {"epochs": 1, "batch_size": 64},
    "seeds": [0],
    "resources": {"cpus_per_trial": 1},
}


def _write(tmp: Path, cfg: dict, name: str = "t.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _arena(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arena.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _own_lines(stderr: str) -> list[str]:
    """stderr without the registry's lines about entry points whose module another branch adds."""
    return [ln for ln in stderr.strip().splitlines() if not ln.startswith("warning: plugin '")]


def test_a_second_driver_on_one_directory_is_refused_and_a_dead_ones_lock_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = _write(tmp_path, {**TINY, "output": str(out)})
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
