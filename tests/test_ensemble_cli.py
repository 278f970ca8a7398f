"""`isthmus ensemble` end to end on tiny runs: files, fields, same seed same numbers, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from isthmus import io
from isthmus.cli import main
from isthmus.models import ModelConfig, build_model
from isthmus.params import params_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def runs(tmp_path):
    cfg = ModelConfig(width=8, depth=2)
    conf = io.run_config(cfg, {"name": "mnist1d", "root": None, "seed": 0}, {}, 0)
    torch.manual_seed(0)
    return [
        str(io.save_run(tmp_path / f"r{i}", params_of(build_model(cfg)), conf)) for i in range(3)
    ]


def test_ensemble_of_runs_and_a_curve(tmp_path, runs, capsys, one_thread):
    line = str(tmp_path / "line")
    assert main(["connect", runs[0], runs[1], "--method", "linear", "--out", line]) == 0
    out = tmp_path / "ens"
    argv = ["ensemble", *runs, "--path", line, "--members", "4", "--spacing", "random",
            "--orders", "3", "--seed", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "ensemble.json").read_text())
    assert doc["data"] == "mnist1d" and doc["split"] == "test" and doc["seed"] == 1
    runs_doc, curve = doc["sources"]["runs"], doc["sources"]["curve"]
    assert runs_doc["members"] == 3 and curve["members"] == 4
    assert runs_doc["members_from"]["runs"] == runs and len(curve["members_from"]["t"]) == 4
    for s in (runs_doc, curve):
        for key in ("accuracy", "nll", "ece", "disagreement", "kl", "js"):
            assert isinstance(s[key], float)
        assert s["member_accuracy"]["min"] <= s["member_accuracy"]["mean"]
        assert s["member_accuracy"]["mean"] <= s["member_accuracy"]["max"]
        assert s["accuracy_vs_members"]["accuracy"][-1] == s["accuracy"]
        assert s["accuracy_vs_members"]["orders"] == 3
    for fig in ("ensemble_growth", "ensemble_diversity", "ensemble_pca"):
        assert (out / f"{fig}.png").stat().st_size > 1000
    assert "runs: 3 members" in capsys.readouterr().out
    # nothing is overwritten without --overwrite; with it, the same seed gives the same numbers
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--pdf"]) == 0
    assert json.loads((out / "ensemble.json").read_text()) == doc
    assert (out / "ensemble_pca.pdf").exists()


def test_ensemble_refusals(tmp_path, runs, capsys):
    assert main(["ensemble", "--out", str(tmp_path / "e")]) == 2
    assert "nothing to ensemble" in capsys.readouterr().err
    assert main(["ensemble", runs[0], "--out", str(tmp_path / "e")]) == 2
    assert "at least 2 members" in capsys.readouterr().err
    assert main(["ensemble", *runs, "--out", runs[0]]) == 2
    assert "input run" in capsys.readouterr().err
