"""End-to-end: the real `isthmus` command on tiny settings."""

import json

import pytest

from isthmus.cli import main

pytestmark = pytest.mark.e2e


def test_train_eval_and_population(tmp_path, capsys):
    out = tmp_path / "a"
    assert (
        main(
            [
                "train",
                "--data",
                "digits",
                "--width",
                "16",
                "--epochs",
                "2",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "test loss" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 1 and cfg["model"]["width"] == 16 and cfg["data"]["name"] == "digits"
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2
    assert main(["eval", str(out)]) == 0
    ev = json.loads((out / "eval.json").read_text())
    m = json.loads((out / "metrics.json").read_text())
    assert abs(ev["test_acc"] - m["test_acc"]) < 1e-9
    pop = tmp_path / "pop"
    assert (
        main(
            [
                "train",
                "--data",
                "digits",
                "--width",
                "8",
                "--epochs",
                "1",
                "--population",
                "3",
                "--out",
                str(pop),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in pop.iterdir() if not p.name.startswith(".")) == ["0", "1", "2"]


def test_user_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert (
        main(["train", "--data", "mnist", "--root", str(tmp_path), "--out", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("isthmus: error:") and "Traceback" not in err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", "--lr", "-1", "--out", str(tmp_path / "y")]) == 2
    assert "lr" in capsys.readouterr().err


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for cmd in ("train", "eval", "demo"):
        assert cmd in text


def test_demo_quick_writes_a_report(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "<img" in html and (tmp_path / "demo" / "learning_curves.png").stat().st_size > 1000
