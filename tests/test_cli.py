"""End-to-end: the real `isthmus` command on tiny settings."""

import argparse
import json

import pytest

from isthmus.cli import build_parser, main

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
    assert "--lr" in capsys.readouterr().err  # a bad number is an argparse error naming the flag


# what `isthmus --help` lists, in this order
COMMANDS = [
    "train", "eval", "demo", "connect", "tree", "surface", "align", "stability", "counterexample",
    "wedges", "hessian", "study", "subspace",
    "ensemble", "sweep",
]  # fmt: skip


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("    ")]
    assert [w for w in listed if w in COMMANDS] == COMMANDS
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == COMMANDS
    for cmd in COMMANDS:  # every subcommand has its own help, with a description and options
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: isthmus {cmd}")
        assert "--seed" in text or cmd == "eval"  # every command that draws takes --seed


def test_a_missing_subcommand_module_is_an_error(monkeypatch):
    import isthmus.cli as cli

    monkeypatch.setattr(cli, "MODULES", (*cli.MODULES, "_no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="_no_such_command"):
        cli.build_parser()


def test_demo_quick_writes_a_report(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "<img" in html and (tmp_path / "demo" / "learning_curves.png").stat().st_size > 1000
