"""End-to-end: stability -> connect --method dropout|noise, and connect --align, via the real CLI."""

from __future__ import annotations

import json

import pytest

from isthmus.cli import main
from isthmus.data import load
from isthmus.models import ModelConfig
from isthmus.train import TrainConfig, train

pytestmark = pytest.mark.e2e
SPEC = {"name": "gaussians", "root": None, "seed": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = load("gaussians")
    cfg = ModelConfig(kind="mlp", depth=3, width=8, input_shape=(20,))
    for s in (0, 1):
        train(
            cfg,
            data,
            TrainConfig(epochs=2, batch_size=256, dropout=0.3),
            seed=s,
            out=root / f"m{s}",
            progress=False,
            data_spec=SPEC,
        )
    return root


def test_stability_then_certified_dropout_path(runs, tmp_path, capsys):
    for s in (0, 1):
        assert (
            main(
                [
                    "stability",
                    str(runs / f"m{s}"),
                    "--kind",
                    "dropout",
                    "--draws",
                    "8",
                    "--swaps",
                    "8",
                    "--curve-draws",
                    "0",
                    "--out",
                    str(tmp_path / f"s{s}"),
                ]
            )
            == 0
        )
    out = tmp_path / "thm1"
    assert (
        main(
            [
                "connect",
                str(runs / "m0"),
                str(runs / "m1"),
                "--method",
                "dropout",
                "--stability",
                str(tmp_path / "s0"),
                str(tmp_path / "s1"),
                "--points",
                "11",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads((out / "path.json").read_text())
    stab = [json.loads((tmp_path / f"s{s}" / "stability.json").read_text()) for s in (0, 1)]
    cert = doc["certificate"]
    assert cert["holds"] and cert["max_loss_on_path"] <= cert["bound"] + 1e-9
    assert {s["kind"] for s in doc["segments"]} >= {"a", "b"}
    # the path uses exactly the kept sets of the given stability results, so eps agrees
    eps = max(stab[0]["epsilon"], stab[1]["epsilon"], 0.0)
    assert cert["bound"] <= max(cert["loss_a"], cert["loss_b"]) + eps + 1e-5
    assert (out / "path.png").is_file() and (out / "path.safetensors").is_file()
    # stability results of other nets (here: swapped) are refused, naming the file and the run
    swapped = [*map(str, (runs / "m0", runs / "m1")), "--method", "dropout", "--stability"]
    swapped += [str(tmp_path / "s1"), str(tmp_path / "s0"), "--out", str(tmp_path / "sw")]
    assert main(["connect", *swapped]) == 2
    assert "was computed for other weights" in capsys.readouterr().err


def test_noise_path_and_aligned_line(runs, tmp_path):
    out = tmp_path / "thm2"
    assert (
        main(
            [
                "connect",
                str(runs / "m0"),
                str(runs / "m1"),
                "--method",
                "noise",
                "--points",
                "11",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads((out / "path.json").read_text())
    assert len(doc["segments"]) == 5
    plain, aligned = tmp_path / "plain", tmp_path / "aligned"
    for o, extra in ((plain, []), (aligned, ["--align", "weights"])):
        assert (
            main(
                [
                    "connect",
                    str(runs / "m0"),
                    str(runs / "m1"),
                    "--method",
                    "linear",
                    "--points",
                    "5",
                    "--out",
                    str(o),
                    *extra,
                ]
            )
            == 0
        )
    a, b = (json.loads((o / "path.json").read_text()) for o in (plain, aligned))
    # aligning B changes the path but not its endpoints' losses (a permuted net, same function)
    assert abs(a["train_loss"][-1] - b["train_loss"][-1]) < 1e-5
    assert a["train_loss"][2] != b["train_loss"][2]
