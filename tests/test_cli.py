"""The command line: conformance of the baselines, one-line errors, a cell by hand."""

from __future__ import annotations

import json

import pytest

from arena.cli import main
from arena.conformance import assert_conforms
from tests.cli_runner import run_cli


@pytest.mark.parametrize("kind,name", [("protector", "none"), ("protector", "classwise-noise"),
                                       ("protector", "classwise-patch"), ("exploiter", "none")])
def test_baselines_conform(kind: str, name: str) -> None:
    assert_conforms(kind, name)


def test_check_plugin_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["check-plugin", "classwise-patch"]) == 0
    assert "0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["train", "--protector", "nope"], "valid choices"),
    (["train", "--protector", "classwise-noise", "--protector-params", '{"eps": "big"}'], "param 'eps'"),
    (["train", "--protector-params", "{not json"], "not valid JSON"),
    (["train", "--arch", "resnet9000"], "resnet18"),
    (["train", "--recipe", '{"epochs": 0}'], "epochs"),
    (["data", "--dataset", "cifar10"], "needs a data root"),
    (["check-plugin", "nothing-like-it"], "valid choices"),
    (["leaderboard", "/no/such/dir"], "no such leaderboard"),
])
def test_bad_input_is_one_line(argv: list[str], needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARENA_DATA", raising=False)
    out = run_cli(argv)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.stderr


def test_train_command_json() -> None:
    out = run_cli(["train", "--dataset-params", '{"size": 16}', "--protector", "classwise-patch", "--epochs", "2",
                   "--json"], check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["protector"] == "classwise-patch" and len(row["acc_curve"]) == 2 and 0 <= row["clean_acc"] <= 1
    assert row["patch_area"] > 0 and row["psnr"] < 100
