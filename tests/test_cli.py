"""End-to-end: the real `isthmus` command on tiny settings."""

import argparse
import contextlib
import io
import json
import shutil

import pytest
from browser import browser, load  # noqa: F401 - the fixture

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
    names = sorted(p.name for p in pop.iterdir() if not p.name.startswith("."))
    assert names == ["0", "1", "2", "command.json"]  # the members, and the command that made them
    assert json.loads((pop / "command.json").read_text())["argv"][:2] == ["isthmus", "train"]


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
    "train", "eval", "demo", "report", "connect", "tree", "surface", "align", "stability", "counterexample",
    "wedges", "hessian", "study", "subspace",
    "ensemble", "sweep", "reproduce", "instability",
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
        assert "--seed" in text or cmd in ("eval", "report")  # every command that draws has it


def test_a_missing_subcommand_module_is_an_error(monkeypatch):
    import isthmus.cli as cli

    monkeypatch.setattr(cli, "MODULES", (*cli.MODULES, "_no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="_no_such_command"):
        cli.build_parser()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One quick demo for the tests below: its folder and what it printed."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_demo_quick_writes_a_report(demo):
    out, printed = demo
    html = (out / "report.html").read_text()
    assert "<img" in html and (out / "learning_curves.png").stat().st_size > 1000
    assert printed.splitlines()[-1] == f"report: {(out / 'report.html').resolve()}"
    assert '<a href="summary.json">summary.json</a>' in html
    assert "<td>bezier_epochs</td><td>1</td>" in html  # settings as a table, not a JSON dump
    assert "isthmus demo --quick --out" in html


def test_demo_report_shows_everything_when_moved_alone(demo, tmp_path, browser):  # noqa: F811
    out, _ = demo
    shutil.copy(out / "report.html", tmp_path / "moved.html")
    got = load(browser, tmp_path / "moved.html")
    figures = sorted(out.glob("*.png"))
    assert len(figures) == 6 and len(got["images"]) == len(figures) and got["errors"] == []
    assert all(i["complete"] and i["width"] > 0 for i in got["images"]), got["images"]
