"""The tournament engine with real Ray (embedded, 2 CPUs, started once for the module) and real Parquet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pds
import pytest
import yaml

from arena.board import matrices, plot_heatmaps, rankings
from arena.leaderboard import SCHEMA_VERSION, read_rows
from arena.tournament.config import ConfigError, load_config
from arena.tournament.runner import run_tournament
from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]

# Ray tests run one after another on one xdist worker (see tests/conftest.py): one embedded Ray at a time.
pytestmark = pytest.mark.xdist_group("ray")

BASE = {
    "name": "t",
    "plugins": ["tests.arena_test_plugins"],
    "datasets": [{"name": "digits", "params": {"size": 16}, "train": 200, "test": 100}],
    "protectors": ["none", {"name": "classwise-patch", "params": {"ratio": 0.25}}, "test-boom", "test-over-budget"],
    "exploiters": ["none", "test-invert"],
    "architectures": ["cnn-small"],
    "recipe": {"epochs": 1, "batch_size": 64},
    "seeds": [0],
    "resources": {"cpus_per_trial": 1},
}


def _write(tmp: Path, cfg: dict, name: str = "t.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_grid_runs_each_stage_once_records_failures_and_reruns_free(tmp_path: Path, ray_local) -> None:
    cfg = load_config(_write(tmp_path, {**BASE, "output": str(tmp_path / "out")}))
    s = run_tournament(cfg, live=False)
    assert s.cells == 8 and s.ran == 8
    assert s.stages["protect"] == 4, "each protector runs once per data set, not once per cell"
    assert s.stages["purify"] == 4, "only the two protectors that succeed reach the purify stage"
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 8 and len({r["cell_key"] for r in rows}) == 8
    by = {(r["protector"], r["exploiter"]): r for r in rows}
    assert by[("test-boom", "none")]["status"] == "failed" and "boom" in by[("test-boom", "none")]["error"]
    assert by[("test-over-budget", "test-invert")]["status"] == "invalid"
    assert "exceeds the declared 2/255" in by[("test-over-budget", "none")]["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4 and all(0 <= r["clean_acc"] <= 1 and len(r["acc_curve"]) == 1 for r in ok)
    assert by[("classwise-patch", "none")]["patch_area"] > 0
    assert by[("none", "test-invert")]["purify_psnr"] < 20, "inverting images is a big change"
    assert by[("none", "none")]["purify_psnr"] is None
    # the directory reads as one pyarrow dataset with the versioned schema
    ds = pds.dataset(str(tmp_path / "out"), format="parquet")
    assert ds.count_rows() == 8 and ds.schema.metadata[b"arena_schema_version"] == SCHEMA_VERSION.encode()
    assert {r["protector_label"] for r in rows} == {"none", "classwise-patch", "test-boom", "test-over-budget"}
    assert {r["exploiter_label"] for r in rows} == {"none", "test-invert"}
    assert {r["architecture_label"] for r in rows} == {"cnn-small"}
    again = run_tournament(cfg, live=False)
    assert again.ran == 0 and again.skipped == 8 and not any(again.stages.values())
    # the board's --tournament filter expands the grid exactly as the run did (precision included)
    from arena.gridrows import grid_rows

    _, info = grid_rows(tmp_path / "out", cfg.path, rows)
    assert (info["in_grid"], info["stale"], info["absent"]) == (8, 0, 0), info
    mats = matrices(rows)
    assert mats[0]["cells"]["test-boom"]["none"]["status"] == "failed"
    ranks = rankings(rows)
    assert [p["protector"] for p in ranks["protectors"]] and "test-over-budget" not in [
        p["protector"] for p in ranks["protectors"]], "invalid cells are never ranked"
    assert {d["protector"] for d in ranks["unranked"]} == {"test-boom", "test-over-budget"}
    assert all(d["complete"] for d in ranks["protectors"]), "the protectors that ran have every cell"
    png = plot_heatmaps(mats, tmp_path / "board.png")
    assert png.stat().st_size > 5000


def test_partial_poisoning_trains_the_clean_part_control(tmp_path: Path, ray_local) -> None:
    cfg = load_config(_write(tmp_path, {**BASE, "protectors": ["classwise-noise"], "exploiters": ["none"],
                                        "plugins": [], "poison_ratios": [0.5], "output": str(tmp_path / "o")}))
    run_tournament(cfg, live=False)
    rows = read_rows(tmp_path / "o")
    subsets = sorted(r["train_subset"] for r in rows)
    assert subsets == ["all", "clean-only"] and all(r["status"] == "ok" for r in rows)
    ctrl = next(r for r in rows if r["train_subset"] == "clean-only")
    assert ctrl["protector"] == "(clean part only)"


def test_killed_run_resumes_with_every_cell_exactly_once(tmp_path: Path, ray_local) -> None:
    cfg = {**BASE, "plugins": [], "protectors": ["none", "classwise-noise", {"name": "classwise-patch"}],
           "exploiters": ["none"], "seeds": [0, 1], "recipe": {"epochs": 2, "batch_size": 64},
           "output": str(tmp_path / "out")}
    path = _write(tmp_path, cfg)
    # A real interpreter, not tests/cli_runner.py: the driver is killed from outside mid-run (its session).
    proc = subprocess.Popen([sys.executable, "-m", "arena.cli", "tournament", str(path), "--no-live"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "out").glob("cell-*.parquet")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(list((tmp_path / "out").glob("cell-*.parquet")))
    assert 1 <= before < 6, f"kill should land mid-run, found {before} rows"
    s = run_tournament(load_config(path), live=False)
    assert s.skipped == before and s.ran == 6 - before
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 6 and len({r["cell_key"] for r in rows}) == 6 and all(r["status"] == "ok" for r in rows)


def test_impossible_resources_are_rejected_before_running(tmp_path: Path, ray_local) -> None:
    cfg = load_config(_write(tmp_path, {**BASE, "resources": {"gpus_per_trial": 0.25}, "output": str(tmp_path / "g")}))
    with pytest.raises(ConfigError, match=r"gpus_per_trial = 0.25: the Ray cluster has 0 GPUs"):
        run_tournament(cfg, live=False)
    assert not list((tmp_path / "g").glob("cell-*"))


BAD = [
    ({"protectors": ["emn-typo"]}, "protectors[0] = 'emn-typo': expected a registered protector; valid choices:"),
    ({"protectors": [{"name": "classwise-noise", "params": {"eps": "big"}}]}, "protectors[0]: protector 'classwise-noise': param 'eps'"),
    ({"protectors": [{"name": "classwise-noise", "params": {"epsilon": 1}}]}, "unknown param 'epsilon'; valid params: eps"),
    ({"exploiters": ["nope"]}, "exploiters[0] = 'nope': expected a registered exploiter"),
    ({"architectures": ["resnet9"]}, "architectures[0].name = 'resnet9': expected a registered architecture"),
    ({"datasets": [{"name": "cifar10"}]}, "datasets[0].root"),
    ({"datasets": [{"name": "imagefolder", "root": "/no/such/dir"}]}, "datasets[0].root = '/no/such/dir': expected an existing directory"),
    ({"datasets": [{"name": "digits", "params": {"size": 3}}]}, "param 'size'"),
    ({"recipe": {"epochs": -1}}, "param 'epochs' = -1"),
    ({"recipe": {"optimizer": "adam"}}, "unknown param 'optimizer'"),
    ({"poison_ratios": [0]}, "poison_ratios[0] = 0: expected float > 0.0"),
    ({"seeds": "zero"}, "seeds = 'zero': expected a non-empty list"),
    ({"resources": {"cpus_per_trial": 0}}, "resources.cpus_per_trial = 0"),
    ({"resources": {"gpu": 1}}, "resources.gpu = 1: expected a known key"),
    ({"protocol": 1}, "protocol = 1: expected a known key"),
    ({"plugins": ["no.such.module"]}, "cannot import plugin module 'no.such.module'"),
    ({"architectures": [{"name": "cnn-small", "protectors": ["sem"]}]}, "architectures[0].protectors[0] = 'sem'"),
]


@pytest.mark.parametrize("change,needle", BAD)
def test_malformed_tournaments_give_one_line_errors(tmp_path: Path, change: dict, needle: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARENA_DATA", raising=False)
    path = _write(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)) and needle in msg, msg


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nprotectors: [none\nexploiters: [none]\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+, column \d+: not valid YAML"):
        load_config(p)
    out = run_cli(["tournament", str(p)])
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_quick_tournament_is_valid_and_covers_every_builtin_plugin() -> None:
    """Every built-in protector runs in the quick grid; an exploiter left out of it (for time) runs in both
    CIFAR-10 grids and is named in the quick file's header, so no built-in is silently never run."""
    import yaml

    from arena.registry import get_registry

    cfg = load_config(ROOT / "tournaments" / "quick.yaml")
    reg = get_registry()
    used_p = {p.name for p in cfg.protectors}
    used_e = {part.name for e in cfg.exploiters for part in e.parts}
    builtin = lambda kind: {n for n in reg.names(kind) if reg.entry(kind, n).source.startswith("entry point unlearnable-arena")}  # noqa: E731
    assert builtin("protectors") <= used_p, builtin("protectors") - used_p
    header = (ROOT / "tournaments" / "quick.yaml").read_text().split("\nname:")[0]
    for grid in ("cifar10-cpu.yaml", "full.yaml"):
        raw = yaml.safe_load((ROOT / "tournaments" / grid).read_text())
        names = {e if isinstance(e, str) else e["name"] for e in raw["exploiters"]}
        names |= {p if isinstance(p, str) else p["name"] for p in raw["protectors"]}
        missing = (builtin("exploiters") | builtin("protectors")) - names
        assert not missing, f"{grid} lacks {sorted(missing)}"
    for name in builtin("exploiters") - used_e:
        assert name in header, f"quick.yaml leaves out {name} without saying so"


def test_training_level_exploiters_share_one_pass_through_purify_job(tmp_path: Path) -> None:
    from arena.registry import get_registry
    from arena.tournament.grid import expand
    from arena.tournament.runner import prepare_data
    from arena.tournament.stagecache import StageCache

    cfg = load_config(_write(tmp_path, {**BASE, "plugins": [], "protectors": ["none", "classwise-noise"],
                                        "exploiters": ["none", "mixup", "early-stopping", "iss-jpeg"]}))
    grid = expand(cfg, prepare_data(cfg, StageCache(tmp_path / "c")), get_registry())
    assert len(grid.cells) == 8, "every protector x exploiter is its own cell"
    assert len(grid.purifies) == 4, "per protector: one pass-through job for none/mixup/early-stopping + iss-jpeg"
    assert len(grid.protects) == 2


def test_leaderboard_reads_a_tree_of_tournaments_and_skips_caches(tmp_path: Path) -> None:
    from arena.leaderboard import write_row

    row = {"tournament": "a", "dataset": "digits", "protector": "none", "exploiter": "none", "architecture": "cnn-small",
           "poison_ratio": 1.0, "seed": 0, "status": "ok", "train_subset": "all", "clean_acc": 0.9}
    write_row(tmp_path / "a", {**row, "cell_key": "k1"})
    write_row(tmp_path / "b", {**row, "tournament": "b", "cell_key": "k2"})
    write_row(tmp_path / "b" / ".cache", {**row, "tournament": "hidden", "cell_key": "k3"})
    (tmp_path / "README.md").write_text("not a row")
    (tmp_path / "b" / ".tmp-1-cell-k4.parquet").write_bytes(b"half a file")
    rows = read_rows(tmp_path)
    assert sorted(r["tournament"] for r in rows) == ["a", "b"]


def test_rows_keep_protect_diagnostics_and_mark_a_stage_cut_short_weak(tmp_path: Path, ray_local) -> None:
    """EMN stopped by max_rounds before its error criterion: every row built on it says weak, with the info."""
    emn = {"surrogate": "cnn-small", "batch_size": 64, "pgd_steps": 1, "model_steps": 1}
    cfg = load_config(_write(tmp_path, {
        **BASE, "output": str(tmp_path / "out"), "exploiters": ["none"],
        "protectors": ["none", {"name": "emn-samplewise", "params": {**emn, "max_rounds": 1, "stop_error": 0.0}},
                       {"name": "classwise-noise", "params": {"eps": 0.0314}}]}))
    run_tournament(cfg, live=False)
    by = {r["protector"]: r for r in read_rows(tmp_path / "out")}
    emn_row = by["emn-samplewise"]
    info = json.loads(emn_row["protect_info"])
    assert emn_row["status"] == "ok" and emn_row["weak"] is True
    assert info["converged"] is False and info["hit_max_rounds"] is True and info["rounds"] == 1
    assert by["none"]["weak"] is False and by["classwise-noise"]["weak"] is False
    # the arena's own measure of the shortcut: class-wise noise predicts held-out labels perfectly
    assert by["classwise-noise"]["noise_separability"] == 1.0 and by["none"]["noise_separability"] is None
    # and its energy is one pattern per class (up to the uint8 clipping at 0 and 255); sample-wise EMN's is not
    assert by["classwise-noise"]["noise_class_share"] > 0.9 and by["none"]["noise_class_share"] is None
    assert emn_row["noise_class_share"] < by["classwise-noise"]["noise_class_share"] - 0.2, emn_row["noise_class_share"]


def test_a_raising_observer_is_reported_and_skipped(tmp_path: Path, ray_local) -> None:
    """An ``arena_cell_finished`` bug in a logging plugin must not end the grid or silence other observers."""
    seen = tmp_path / "seen.txt"
    (tmp_path / "observers.py").write_text(
        "from arena import hookimpl\n\n"
        "@hookimpl\ndef arena_cell_finished(row):\n    raise RuntimeError('logger down')\n")
    (tmp_path / "recorder.py").write_text(
        "from arena import hookimpl\n\n"
        f"@hookimpl\ndef arena_cell_finished(row):\n    open({str(seen)!r}, 'a').write(row['cell_key'] + '\\n')\n")
    cfg = load_config(_write(tmp_path, {**BASE, "output": str(tmp_path / "out"), "protectors": ["none"],
                                        "exploiters": ["none"], "plugins": ["observers.py", "recorder.py"]}))
    from rich.console import Console

    console = Console(record=True, width=200)
    s = run_tournament(cfg, live=False, console=console)
    assert s.statuses["ok"] == 1
    text = console.export_text()
    assert "observer 'observers' raised RuntimeError: logger down" in text
    assert seen.read_text().split() == [r["cell_key"] for r in read_rows(tmp_path / "out")]
