"""The leaderboard views on real Parquet rows: labels, seed intervals, ranks with ties and failures,
threat models, every --metric, --diagnostics, --tournament and ``arena compare``."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from arena.board import cell_text, matrices, rankings
from arena.cli import main
from arena.leaderboard import read_rows, write_row
from arena.stats import summarize, t975
from arena.tournament.config import ConfigError, parse_config

AT8 = '{"eps": 0.0314, "steps": 2}'
AT4 = '{"eps": 0.0157, "steps": 2}'


def row(p: str = "none", e: str = "none", a: str = "cnn-small", seed: int = 0, acc: float | None = 0.5,
        status: str = "ok", **kw: Any) -> dict[str, Any]:
    r = {"tournament": "t", "dataset": "digits", "dataset_params": '{"size": 16}', "train_images": 100,
         "protector": p, "protector_params": "{}", "exploiter": e, "exploiter_params": "{}", "architecture": a,
         "recipe": '{"epochs": 1}', "poison_ratio": 1.0, "train_subset": "all", "seed": seed, "status": status,
         "error": None if status == "ok" else f"{status}: boom", "clean_acc": acc if status == "ok" else None,
         "budget_kind": "linf", "budget_value": 8 / 255, **kw}
    if status != "ok":
        r["train_images"] = None
    r["cell_key"] = hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return r


def board(tmp: Path, rows: list[dict[str, Any]], name: str = "lb") -> Path:
    for r in rows:
        write_row(tmp / name, r)
    return tmp / name


def test_two_param_variants_of_one_exploiter_are_two_labels_in_the_config() -> None:
    raw = yaml.safe_load("""
name: x
datasets: [{name: digits, params: {size: 16}}]
protectors: [none, {name: classwise-noise, label: noise}]
exploiters:
  - none
  - {name: adversarial-training, params: {steps: 2}}
  - {name: adversarial-training, params: {eps: 0.0157, steps: 2}}
architectures:
  - cnn-small
  - {name: cnn-small, recipe: {lr: 0.05}, exploiters: ["adversarial-training[eps=0.0157]"], protectors: [noise]}
""")
    cfg = parse_config(raw, Path("x.yaml"))
    assert [p.entry_label for p in cfg.protectors] == ["none", "noise"]
    assert [e.entry_label for e in cfg.exploiters] == [
        "none", "adversarial-training[eps=0.03137]", "adversarial-training[eps=0.0157]"]
    assert [a.entry_label for a in cfg.architectures] == ["cnn-small[lr=0.1]", "cnn-small[lr=0.05]"]
    assert cfg.architectures[1].only_exploiters == ("adversarial-training[eps=0.0157]",)
    assert cfg.architectures[1].only_protectors == ("noise",)


@pytest.mark.parametrize("protectors,needle", [
    (["none", {"name": "classwise-noise", "label": ""}], "protectors[1].label = '': expected a non-empty string"),
    (["none", {"name": "classwise-noise", "label": "none"}], "protectors[1].label = 'none': expected a label no other"),
    (["classwise-noise", "classwise-noise"], "expected each entry at most once"),
])
def test_bad_labels_are_one_line_errors(protectors: list, needle: str) -> None:
    raw = {"datasets": ["digits"], "protectors": protectors, "architectures": ["cnn-small"]}
    with pytest.raises(ConfigError) as e:
        parse_config(raw, Path("x.yaml"))
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_two_param_variants_are_two_matrix_columns(tmp_path: Path) -> None:
    rows = [row(e="adversarial-training", exploiter_params=AT8, exploiter_label="adversarial-training[eps=0.0314]",
                acc=0.9),
            row(e="adversarial-training", exploiter_params=AT4, exploiter_label="adversarial-training[eps=0.0157]",
                acc=0.3),
            row(acc=0.2)]
    # the same two variants from rows written before labels existed: told apart by their params
    old = [{**r, "tournament": "old", "exploiter_label": None} for r in rows]
    mats = matrices(read_rows(board(tmp_path, rows + old)))
    for m in mats:
        assert len(m["exploiters"]) == 3, m["exploiters"]
        vals = sorted(c["value"] for c in m["cells"]["none"].values())
        assert vals == [0.2, 0.3, 0.9] and all(c["n"] == 1 for c in m["cells"]["none"].values())
    old_m = next(m for m in mats if m["tournament"] == "old")
    assert "adversarial-training[eps=0.0157]" in old_m["exploiters"]


def test_three_seeds_give_a_student_t_interval(tmp_path: Path) -> None:
    accs = [0.50, 0.56, 0.62]
    rows = read_rows(board(tmp_path, [row(p="classwise-noise", seed=s, acc=a) for s, a in enumerate(accs)]))
    c = matrices(rows)[0]["cells"]["classwise-noise"]["none"]
    mean = sum(accs) / 3
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / 2)
    hw = 4.303 * sd / math.sqrt(3)
    assert c["n"] == 3 and c["value"] == pytest.approx(mean)
    assert c["std"] == pytest.approx(sd) and c["ci_low"] < c["value"] < c["ci_high"]
    assert c["ci_low"] == pytest.approx(mean - hw, abs=1e-4) and c["ci_high"] == pytest.approx(mean + hw, abs=1e-4)
    assert cell_text(c) == f"56.0±{100 * hw:.1f}"
    one = summarize([0.5])
    assert one.n == 1 and one.ci_low is None and one.std is None
    assert t975(2) == pytest.approx(4.303, abs=1e-3) and t975(200) == pytest.approx(1.972, abs=1e-3)


def test_failed_cell_makes_its_protector_incomplete_and_listed_last(tmp_path: Path) -> None:
    rows = []
    for p, base in (("none", 0.9), ("classwise-noise", 0.6), ("emn", 0.2)):
        for e in ("none", "mixup"):
            for s in (0, 1):
                bad = p == "emn" and e == "mixup" and s == 1
                rows.append(row(p=p, e=e, seed=s, acc=base + 0.01 * s, status="failed" if bad else "ok"))
    rows = read_rows(board(tmp_path, rows))
    ranks = rankings(rows)
    order = [d["protector"] for d in ranks["protectors"]]
    assert order == ["classwise-noise", "none", "emn"], "the incomplete protector comes after complete ones"
    emn = ranks["protectors"][-1]
    assert emn["complete"] is False and emn["rank"] is None and emn["missing"] == ["mixup / cnn-small s1: failed"]
    assert all(d["complete"] and d["rank"] is not None for d in ranks["protectors"][:2])
    # a cell whose every seed failed reads "failed" in the matrix
    rows = [r for r in rows if not (r["protector"] == "emn" and r["exploiter"] == "mixup" and r["seed"] == 0)]
    c = matrices(rows)[0]["cells"]["emn"]["mixup"]
    assert c["value"] is None and c["status"] == "failed" and cell_text(c) == "failed"
    assert rankings(rows)["protectors"][-1]["missing"] == ["mixup / cnn-small s0: absent",
                                                          "mixup / cnn-small s1: failed"]


def test_overlapping_intervals_share_a_rank(tmp_path: Path) -> None:
    vals = {"none": [0.95, 0.96, 0.97], "a": [0.30, 0.40, 0.50], "b": [0.35, 0.45, 0.55], "c": [0.80, 0.81, 0.82]}
    rows = read_rows(board(tmp_path, [row(p=p, seed=s, acc=v) for p, vs in vals.items() for s, v in enumerate(vs)]))
    shown = {d["protector"]: d["rank_shown"] for d in rankings(rows)["protectors"]}
    assert shown == {"a": "=1", "b": "=1", "c": "3", "none": "4"}
    d = next(d for d in rankings(rows)["protectors"] if d["protector"] == "b")
    assert d["ci_low"] < d["worst_case_acc"] < d["ci_high"] and d["n"] == 3


def test_exploiter_gain_is_a_paired_difference_with_an_interval(tmp_path: Path) -> None:
    rows = []
    for p, base in (("p1", 0.2), ("p2", 0.5)):
        for s in (0, 1, 2):
            rows += [row(p=p, e="none", seed=s, acc=base + 0.05 * s), row(p=p, e="mixup", seed=s, acc=base + 0.05 * s + 0.1 + 0.01 * s)]
    ex = {d["exploiter"]: d for d in rankings(read_rows(board(tmp_path, rows)))["exploiters"]}
    m = ex["mixup"]
    assert m["pairs"] == 6 and m["mean_recovered"] == pytest.approx(0.11)
    assert m["gain_ci_low"] < 0.11 < m["gain_ci_high"] and m["gain_ci_high"] - m["gain_ci_low"] < 0.05, \
        "pairing removes the protector and seed effects"


def test_unbounded_protector_is_ranked_apart(tmp_path: Path) -> None:
    rows = [row(acc=0.95, budget_value=0.0), row(p="noise", acc=0.5), row(p="grey", acc=0.1, budget_kind="none",
                                                                          budget_value=None),
            row(p="patch", acc=0.4, budget_kind="patch", budget_value=0.16)]
    tables = rankings(read_rows(board(tmp_path, rows)))["tables"]
    got = {t["threat_model"]: [d["protector"] for d in t["protectors"]] for t in tables}
    assert got == {"linf 8/255": ["noise", "none"], "patch 0.16": ["patch", "none"], "unbounded": ["grey", "none"]}
    assert [t["unbounded"] for t in tables] == [False, False, True]


@pytest.mark.parametrize("metric", ["robust_acc", "selected_acc", "best_acc", "clean_acc"])
def test_every_metric_works_on_rows_without_it(tmp_path: Path, metric: str, capsys: pytest.CaptureFixture) -> None:
    path = board(tmp_path, [row(acc=0.9), row(p="noise", acc=0.4), row(p="noise", e="mixup", acc=0.6, robust_acc=0.3)])
    assert main(["leaderboard", str(path), "--metric", metric]) == 0
    out = capsys.readouterr().out
    assert ("n/a" in out) == (metric != "clean_acc"), out
    assert main(["leaderboard", str(path), "--metric", metric, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    cell = data["matrices"][0]["cells"]["noise"]["mixup"]
    assert {"std", "ci_low", "ci_high", "n", "weak"} <= set(cell)
    assert cell["value"] == {"robust_acc": 0.3, "clean_acc": 0.6}.get(metric)


def test_diagnostics_list_weak_cells(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    info = json.dumps({"final_error": 0.4, "target": 0.01})
    path = board(tmp_path, [row(acc=0.9), row(p="emn", acc=0.3, weak=True, protect_info=info)])
    assert main(["leaderboard", str(path), "--diagnostics"]) == 0
    out = capsys.readouterr().out
    assert "1 cells with weak protection" in out and "final_error" in out and "30.0w" in out
    assert main(["leaderboard", str(path), "--json", "--diagnostics"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["matrices"][0]["cells"]["emn"]["none"]["weak"] is True
    assert data["matrices"][0]["cells"]["none"]["none"]["weak"] is False
    assert data["weak"] == [{"tournament": "t", "protector": "emn", "exploiter": "none", "architecture": "cnn-small",
                             "seed": 0, "protect_info": {"final_error": 0.4, "target": 0.01}}]


def test_diagnostics_summarize_the_noise_once_per_protect_stage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every exploiter of a protect stage repeats its noise metrics: the summary counts each seed once, and a
    row written before the class share existed (null) does not pull the mean down."""
    rows = [row(acc=0.9)]
    for s, share in ((0, 0.4), (1, 0.6)):
        for e in ("none", "mixup"):
            rows.append(row(p="emn", e=e, seed=s, acc=0.3, noise_separability=1.0, noise_class_share=share,
                            weak=(s == 1 and e == "none")))
    rows.append(row(p="emn", e="cutout", seed=2, acc=0.3, noise_separability=0.5, noise_class_share=None))
    path = board(tmp_path, rows)
    assert main(["leaderboard", str(path), "--json", "--diagnostics"]) == 0
    by = {d["protector"]: d for d in json.loads(capsys.readouterr().out)["noise"]}
    assert by["emn"]["seeds"] == 3 and by["emn"]["weak_cells"] == 1 and by["emn"]["cells"] == 5
    assert by["emn"]["class_share"] == pytest.approx(0.5) and by["emn"]["separability"] == pytest.approx(2.5 / 3)
    assert by["none"]["class_share"] is None
    assert main(["leaderboard", str(path), "--diagnostics"]) == 0
    assert "class share" in capsys.readouterr().out


def test_json_ranking_fields(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = board(tmp_path, [row(acc=0.9, seed=s) for s in (0, 1)] + [row(p="x", acc=0.2 + 0.1 * s, seed=s) for s in (0, 1)])
    assert main(["leaderboard", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    first = data["rankings"]["protectors"][0]
    assert first["protector"] == "x" and first["rank"] == 1 and first["complete"] is True and first["missing"] == []
    assert first["ci_low"] < first["worst_case_acc"] < first["ci_high"] and first["threat_model"] == "linf 8/255"


def test_compare_a_run_with_itself_reports_no_change(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [row(p=p, seed=s, acc=a + 0.01 * s) for p, a in (("none", 0.9), ("x", 0.3), ("y", 0.5)) for s in (0, 1, 2)]
    a = board(tmp_path, rows, "a")
    assert main(["compare", str(a), str(a)]) == 0
    assert "no change" in capsys.readouterr().out
    assert main(["compare", str(a), str(a), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["no_change"] and res["matched"] == 3 and res["changed"] == 0 and not res["rankings_changed"]
    # B: y now protects better than x, well beyond both intervals, and one cell only in B
    b = board(tmp_path, [{**r, "clean_acc": r["clean_acc"] - 0.4} if r["protector"] == "y" else r for r in rows]
              + [row(p="z", acc=0.7)], "b")
    assert main(["compare", str(a), str(b), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert not res["no_change"] and res["changed"] == 1 and res["outside_both_intervals"] == 1
    ch = next(c for c in res["cells"] if c["changed"])
    assert "y x none" in ch["cell"] and ch["diff"] == pytest.approx(0.4)
    assert res["only_in_b"] == ["t: digits {\"size\": 16}: z x none / cnn-small"] and res["only_in_a"] == []
    assert len(res["rankings_changed"]) == 1
    assert main(["compare", str(a), str(b)]) == 0
    assert "1 rankings changed" in " ".join(capsys.readouterr().out.split())


def test_tournament_flag_keeps_only_the_current_grids_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from arena.registry import get_registry
    from arena.tournament.config import load_config
    from arena.tournament.grid import expand, resolve_precision
    from arena.tournament.runner import cell_columns, prepare_data
    from arena.tournament.stagecache import StageCache

    yml = tmp_path / "g.yaml"
    yml.write_text(yaml.safe_dump({"name": "g", "datasets": [{"name": "digits", "params": {"size": 16}, "train": 100,
                                                                "test": 50}],
                                   "protectors": ["none", "classwise-noise"], "exploiters": ["none"],
                                   "architectures": ["cnn-small"], "seeds": [0]}))
    cfg = load_config(yml)
    cache = StageCache(tmp_path / "c")
    keys = prepare_data(cfg, cache)  # the cell as a run keys it, its decided precision included
    grid = expand(cfg, keys, get_registry(), amp=resolve_precision(cfg, {i: cache.data_dir(k) for i, k in keys.items()}))
    cell = next(c for c in grid.cells.values() if c.protector.name == "none")
    good = {**row(acc=0.9), **cell_columns(cell), "tournament": "g"}
    stale = {**good, "cell_key": "0" * 20, "clean_acc": 0.1}  # an older grid's row of the same cell
    path = board(tmp_path, [good, stale, row()])
    assert main(["leaderboard", str(path), "--tournament", str(yml), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stale"]["stale"] == 1 and data["stale"]["in_grid"] == 1 and data["stale"]["absent"] == 1
    assert data["stale"]["other_tournaments"] == 1
    m = data["matrices"][0]
    assert m["cells"]["none"]["none"]["value"] == 0.9, "the stale row is never averaged in"
    assert m["cells"]["classwise-noise"]["none"]["status"] == "absent"
    assert not (path / ".cache").exists(), "showing a board writes nothing into it"
    assert main(["leaderboard", str(path), "--tournament", str(yml)]) == 0
    assert "1 stale rows" in " ".join(capsys.readouterr().out.split())


def test_committed_leaderboards_still_render(capsys: pytest.CaptureFixture) -> None:
    root = Path(__file__).resolve().parents[1] / "leaderboard"
    assert main(["leaderboard", str(root / "quick")]) == 0
    assert "worst case" in capsys.readouterr().out


def test_an_exploiter_entry_may_run_on_fewer_seeds_and_its_protectors_stay_complete(tmp_path: Path) -> None:
    from arena.registry import get_registry
    from arena.tournament.grid import expand

    raw = yaml.safe_load("""
name: x
datasets: [{name: digits, params: {size: 16}}]
protectors: [none, classwise-noise]
exploiters: [none, {name: iss-grayscale, seeds: [0]}]
architectures: [cnn-small]
seeds: [0, 1, 2]
""")
    cfg = parse_config(raw, Path("x.yaml"))
    grid = expand(cfg, {0: "data"}, get_registry())
    assert sorted((c.exploiter.label, c.seed) for c in grid.cells.values() if c.protector.name == "none") == [
        ("iss-grayscale", 0), ("none", 0), ("none", 1), ("none", 2)]
    rows = [row(p, "none", seed=s, acc=0.5 + 0.01 * s) for p in ("none", "classwise-noise") for s in (0, 1, 2)]
    rows += [row(p, "iss-grayscale", seed=0) for p in ("none", "classwise-noise")]
    ranks = rankings(read_rows(board(tmp_path, rows)))
    assert all(d["complete"] for d in ranks["protectors"]), "one-seed exploiters expect one seed, not three"
    with pytest.raises(ConfigError, match=r"exploiters\[1\].seeds\[0\] = 5: expected one of the tournament's seeds"):
        parse_config({**raw, "exploiters": ["none", {"name": "iss-grayscale", "seeds": [5]}]}, Path("x.yaml"))


def test_a_cell_above_every_unprotected_cell_is_suspicious_and_not_ranked(tmp_path: Path) -> None:
    """An exploiter that trained on the test split (or returned the clean images) beats the clean victim."""
    rows = [row("none", e, seed=s, acc=0.90 + 0.01 * s) for e in ("none", "cheat") for s in (0, 1, 2)]
    rows += [row("emn", "none", seed=s, acc=0.2) for s in (0, 1, 2)]
    rows += [row("emn", "cheat", seed=s, acc=1.0) for s in (0, 1, 2)]
    rows += [row("emn", "honest", seed=s, acc=0.93) for s in (0, 1, 2)]
    rows += [row("none", "honest", seed=s, acc=0.91) for s in (0, 1, 2)]
    rs = read_rows(board(tmp_path, rows))
    cells = matrices(rs)[0]["cells"]["emn"]
    assert cells["cheat"]["suspicious"] and not cells["honest"]["suspicious"] and not cells["none"]["suspicious"]
    assert cell_text(cells["cheat"]).endswith("?")
    emn = next(d for d in rankings(rs)["protectors"] if d["protector"] == "emn")
    assert emn["strongest_exploiter"] == "honest" and emn["suspicious"] == ["cheat / cnn-small"]


def test_the_plus_minus_is_the_t_half_width_even_where_the_interval_is_clipped_at_zero(tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture) -> None:
    """Three seeds at 45 / 59 / 19 %: t half-width 49.7 points, interval clipped to [0, 90.6]. The ± must be
    49.7 (the clipped interval's half-width, 45.3, would stand for [-4.5, 86.1], which is neither)."""
    accs = (0.448, 0.586, 0.192)
    path = board(tmp_path, [row(acc=0.9)] + [row(p="gan", seed=s, acc=a) for s, a in enumerate(accs)])
    assert main(["leaderboard", str(path), "--json"]) == 0
    cell = json.loads(capsys.readouterr().out)["matrices"][0]["cells"]["gan"]["none"]
    hw = t975(2) * statistics.stdev(accs) / math.sqrt(3)
    assert cell["ci_low"] == 0.0 and cell["ci_high"] == pytest.approx(statistics.fmean(accs) + hw)
    assert cell["half_width"] == pytest.approx(hw)
    assert main(["leaderboard", str(path)]) == 0
    assert f"{100 * statistics.fmean(accs):.1f}±{100 * hw:.1f}" in capsys.readouterr().out
