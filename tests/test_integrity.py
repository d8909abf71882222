"""Results no plugin can cheat or corrupt (issue 18, items 1-2): adversarial plugins in real Ray workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from arena.integrity import IntegrityError
from arena.leaderboard import read_rows
from arena.tournament.config import load_config
from arena.tournament.runner import run_tournament
from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]

# Ray tests run one after another on one xdist worker (see tests/conftest.py): one embedded Ray at a time.
pytestmark = pytest.mark.xdist_group("ray")

BASE = {
    "name": "integrity",
    "plugins": ["tests.integrity_plugins"],
    "datasets": [{"name": "digits", "params": {"size": 16}, "train": 200, "test": 100}],
    "protectors": ["none"],
    "exploiters": ["none"],
    "architectures": ["cnn-small"],
    "recipe": {"epochs": 1, "batch_size": 64},
    "seeds": [0],
    "resources": {"cpus_per_trial": 1, "max_concurrent": 1},  # one actor: every cell shares its loaded splits
}


def _cfg(tmp: Path, out: str, **change):
    p = tmp / f"{out}.yaml"
    p.write_text(yaml.safe_dump({**BASE, **change, "output": str(tmp / out)}))
    return load_config(p)


def _by(rows):
    return {(r["protector"], r["exploiter"]): r for r in rows}


def test_protector_writing_into_the_budget_split_is_invalid_and_corrupts_nothing(tmp_path, ray_local):
    run_tournament(_cfg(tmp_path, "a", protectors=["test-budget-writer", "none"]), live=False)
    run_tournament(_cfg(tmp_path, "b"), live=False)
    a, b = _by(read_rows(tmp_path / "a")), _by(read_rows(tmp_path / "b"))
    cheat = a[("test-budget-writer", "none")]
    assert cheat["status"] == "invalid" and "exceeds the declared 8/255" in cheat["error"], cheat["error"]
    assert a[("none", "none")]["status"] == "ok"
    assert a[("none", "none")]["clean_acc"] == b[("none", "none")]["clean_acc"]
    assert a[("none", "none")]["acc_curve"] == b[("none", "none")]["acc_curve"]
    # the declared threat model is on every row
    assert (a[("none", "none")]["budget_kind"], a[("none", "none")]["budget_value"]) == ("linf", 0.0)


def test_tampered_stored_split_stops_the_next_run_naming_the_file(tmp_path, ray_local):
    first = _cfg(tmp_path, "o")
    run_tournament(first, live=False)
    (test_npz,) = (tmp_path / "o" / ".cache" / "data").glob("*/test.npz")
    rows_before = sorted(p.name for p in (tmp_path / "o").glob("cell-*.parquet"))
    # a protector that rewrites the stored test labels from a child process
    run_tournament(_cfg(tmp_path, "o", protectors=[{"name": "test-tamper", "params": {"target": str(test_npz)}}]),
                   live=False)
    path = tmp_path / "o.yaml"
    out = run_cli(["tournament", str(path), "--no-live"], cwd=ROOT)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(test_npz) in lines[0] and "does not match its recorded hash" in lines[0], lines
    v = run_cli(["verify", str(tmp_path / "o")], cwd=ROOT)
    assert v.returncode == 1 and str(test_npz) in v.stdout and v.stdout.count("\n") == 1, v.stdout
    assert len(rows_before) == 1


def test_tampered_stage_output_stops_the_run_without_writing_rows(tmp_path, ray_local):
    from arena.data import ImageSet

    cfg = _cfg(tmp_path, "s")
    run_tournament(cfg, live=False)
    ok = run_cli(["verify", str(tmp_path / "s")], cwd=ROOT)
    assert ok.returncode == 0 and "0 bad" in ok.stdout, ok.stdout + ok.stderr
    (npz,) = (tmp_path / "s" / ".cache" / "purify").glob("*.npz")
    d = ImageSet.load(npz)
    d.images[0, 0, 0, 0] ^= 1
    d.save(npz)
    for row in (tmp_path / "s").glob("cell-*.parquet"):
        row.unlink()
    with pytest.raises(IntegrityError) as e:
        run_tournament(cfg, live=False)
    assert str(npz) in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "s").glob("cell-*.parquet"))


# --- plugin code never receives held-out data ----------------------------------------------------

def test_exploiters_cannot_reach_test_data_or_write_robust_acc(tmp_path, ray_local):
    from arena.tournament.runner import prepare_data
    from arena.tournament.stagecache import StageCache

    cfg = _cfg(tmp_path, "x")
    (dk,) = prepare_data(cfg, StageCache(tmp_path / "x" / ".cache")).values()
    test_npz = tmp_path / "x" / ".cache" / "data" / dk / "test.npz"
    assert test_npz.exists()
    adv = {"name": "adversarial-training", "params": {"steps": 1, "eval_steps": 2, "eval_size": 32}}
    cfg = _cfg(tmp_path, "x", exploiters=["none", "test-peek", {"name": "test-open-test", "params": {"path": str(test_npz)}},
                                          "test-fake-robust", adv])
    run_tournament(cfg, live=False)
    by = _by(read_rows(tmp_path / "x"))
    peek = by[("none", "test-peek")]
    assert peek["status"] == "ok" and '"found_npz": 0' in peek["extra"], "no split next to the plugin's cache"
    opened = by[("none", "test-open-test")]
    assert opened["status"] == "integrity", opened
    assert str(test_npz) in opened["error"] and "\n" not in opened["error"]
    fake = by[("none", "test-fake-robust")]
    assert fake["status"] == "ok" and fake["robust_acc"] is None and fake["clean_acc"] < 1.0
    assert "robust_acc" not in (fake["extra"] or "") and "clean_acc" not in (fake["extra"] or "")
    robust = by[("none", "adversarial-training")]
    assert robust["status"] == "ok" and 0.0 <= robust["robust_acc"] <= 1.0
    assert by[("none", "none")]["robust_acc"] is None


def test_audit_guard_refuses_swallowed_and_symlinked_access_only_inside(tmp_path):
    from arena.guard import plugin_code
    from arena.integrity import IntegrityViolation

    store = tmp_path / "store"
    store.mkdir()
    secret = store / "test.npz"
    secret.write_bytes(b"x")
    (tmp_path / "link").symlink_to(secret)
    assert secret.read_bytes() == b"x"  # outside plugin code: the arena's own loads work
    for target in (secret, tmp_path / "link"):
        with pytest.raises(IntegrityViolation) as e:
            with plugin_code("exploiter 'cheat'", [store]):
                try:
                    target.read_bytes()
                except Exception:
                    pass  # swallowed: the guard still fails the stage
        assert "exploiter 'cheat'" in str(e.value) and str(secret) in str(e.value)
    with plugin_code("exploiter 'fair'", [store]):
        (tmp_path / "own.txt").write_text("fine")  # its own files are not refused
    assert secret.read_bytes() == b"x"


# --- bad row files -------------------------------------------------------------------------------

def test_corrupt_and_foreign_row_files_are_named_skipped_moved_aside_and_recomputed(tmp_path, ray_local, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = _cfg(tmp_path, "r")
    run_tournament(cfg, live=False)
    (row,) = (tmp_path / "r").glob("cell-*.parquet")
    good = read_rows(tmp_path / "r")[0]
    row.write_bytes(row.read_bytes()[: 200])  # a truncated row, as a full disk or a crash leaves it
    foreign = tmp_path / "r" / "cell-foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    capsys.readouterr()
    assert read_rows(tmp_path / "r") == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("warning: ") and line.endswith("skipped") for line in err), err
    named = {line.split(": ")[1]: line for line in err}
    assert "not a readable Parquet file" in named[str(row)] and "no 'cell_key' column" in named[str(foreign)], err
    board = run_cli(["leaderboard", str(tmp_path / "r")], cwd=ROOT)
    assert "Traceback" not in board.stderr and str(row) in board.stderr, board.stderr
    s = run_tournament(cfg, live=False)
    assert s.ran == 1 and s.skipped == 0, "the corrupt row's cell is recomputed, not counted as finished"
    assert sorted(p.name for p in (tmp_path / "r" / ".corrupt").iterdir()) == sorted([row.name, foreign.name])
    (again,) = read_rows(tmp_path / "r")
    assert again["cell_key"] == good["cell_key"] and again["clean_acc"] == good["clean_acc"]


def test_a_hung_plugin_times_out_into_a_failed_row_and_the_rest_finishes(tmp_path, ray_local):
    import time

    # the clock runs only while a ready actor holds the stage: 10 s is ages for the pass-through purify
    cfg = _cfg(tmp_path, "h", exploiters=["test-hang", "none"],
               resources={"cpus_per_trial": 1, "max_concurrent": 1, "timeout_s": {"purify": 10}})
    t0 = time.perf_counter()
    s = run_tournament(cfg, live=False)
    assert time.perf_counter() - t0 < 300 and s.ran == 2
    by = _by(read_rows(tmp_path / "h"))
    hung = by[("none", "test-hang")]
    assert hung["status"] == "failed" and hung["error"] == "purify: timed out after 10 s (resources.timeout_s)"
    assert by[("none", "none")]["status"] == "ok", "the replaced actor runs the remaining cells"
