"""End-to-end: `isthmus subspace RUN RUN RUN` on tiny runs, in-process."""

from __future__ import annotations

import json

import pytest
import torch

from isthmus.cli import main
from isthmus.data import load
from isthmus.io import load_run
from isthmus.models import ModelConfig
from isthmus.subspace import load_subspace
from isthmus.train import TrainConfig, train

pytestmark = pytest.mark.e2e
SPEC = {"name": "gaussians", "root": None, "seed": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = load("gaussians")
    mlp = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(20,))
    for s in (0, 1, 2):
        train(mlp, data, TrainConfig(epochs=1, batch_size=256), seed=s, out=root / f"m{s}",
              progress=False, data_spec=SPEC)  # fmt: skip
    return root


def test_subspace_writes_its_files_resumes_and_refuses_to_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "sub"
    rs = [str(runs / f"m{s}") for s in (0, 1, 2)]
    args = ["subspace", *rs, "--connectors", "2", "--epochs", "2", "--batch-size", "256",
            "--eval-samples", "32", "--edge-points", "5", "--seed", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((out / "subspace.json").read_text())
    assert doc["method"] == "join" and doc["runs"] == rs and doc["dimension"] == 2
    assert doc["simplices"] == [[3, 4, 0], [1, 3, 4], [3, 4, 2]] and doc["fixed"] == [0, 1, 2]
    assert doc["vertices"] == 5 and len(doc["vertex_metrics"]["train_loss"]) == 5
    assert len(doc["fit"]["history"]) == 2 and doc["fit"]["seed"] == 3
    assert doc["samples"]["count"] == 32 and len(doc["edges"]) == 7 and len(doc["lines"]) == 3
    for i, r in enumerate(rs):  # the solutions' own metrics, reproduced inside the complex
        m = load_run(r).metrics
        assert doc["solution_loss"][i] == pytest.approx(m["train_loss"], rel=1e-5)
    s = doc["sample_loss"]
    assert s["min"] <= s["quantiles"]["0.5"] <= s["quantiles"]["0.99"] <= s["max"]
    assert (out / "subspace.png").stat().st_size > 10_000
    assert "uniform samples" in capsys.readouterr().out
    sub = load_subspace(out)
    assert (
        len(sub.vertices) == 5 and sub.sample(4, torch.Generator())["layers.0.weight"].shape[0] == 4
    )

    assert main(args) == 2  # exists: neither --overwrite nor --resume
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # the finished checkpoint: the same complex
    again = json.loads((out / "subspace.json").read_text())
    assert again["sample_loss"] == doc["sample_loss"] and again["fit"] == doc["fit"]
    assert main([*args, "--resume", "--volume", "0.5"]) == 2  # another fit's checkpoint
    assert "another subspace fit" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--seed", "4"]) == 0
    assert json.loads((out / "subspace.json").read_text())["fit"]["seed"] == 4
    assert main(["subspace", rs[0], "--out", str(tmp_path / "one")]) == 2


def test_subspace_grows_from_one_run_and_trains_from_scratch(runs, tmp_path):
    small = ["--epochs", "1", "--batch-size", "256", "--eval-samples", "8", "--edge-points", "3"]
    out = tmp_path / "grow"
    assert main(["subspace", str(runs / "m0"), "--grow", "2", *small, "--out", str(out)]) == 0
    doc = json.loads((out / "subspace.json").read_text())
    assert doc["method"] == "grow" and doc["simplices"] == [[0, 1, 2]] and doc["fixed"] == [0]
    assert doc["runs"] == [str(runs / "m0")] and len(doc["fit"]["stages"]) == 2
    assert doc["solution_loss"][0] == pytest.approx(
        load_run(runs / "m0").metrics["train_loss"], rel=1e-5
    )
    assert doc["lines"] == [] and doc["line_max_loss"] is None
    sub = load_subspace(out)
    assert all(
        torch.equal(sub.vertices[0][k], load_run(runs / "m0").params[k]) for k in sub.vertices[0]
    )
    out = tmp_path / "scratch"
    args = ["subspace", "--from-scratch", "1", "--data", "gaussians", "--width", "8", *small]
    assert main([*args, "--out", str(out)]) == 0
    doc = json.loads((out / "subspace.json").read_text())
    assert doc["method"] == "scratch" and doc["dimension"] == 1 and doc["fixed"] == []
    assert doc["model"]["width"] == 8 and doc["penalty"]["cosine"] == 1.0 and doc["runs"] == []
    assert (out / "subspace.png").stat().st_size > 10_000
    assert (
        main(
            [
                "subspace",
                str(runs / "m0"),
                "--grow",
                "1",
                "--from-scratch",
                "1",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
