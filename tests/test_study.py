"""The hyperparameter study: the grid trains as populations, every net is measured, and the
command writes study.json and its figure."""

from __future__ import annotations

import json

import pytest
import torch

from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig
from isthmus.study import _configs, measure, run_study, train_grid
from isthmus.train import TrainConfig, train

MLP = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(40,))
TC = TrainConfig(lr=0.05, epochs=1, batch_size=128)


def test_the_grid_trains_each_value_as_its_own_run(small_mnist1d):
    d = small_mnist1d
    runs = train_grid(MLP, d, TC, "l2", [0.0, 0.01], [1, 2], progress=False)
    assert [(r["value"], r["seed"]) for r in runs] == [(0.0, 1), (0.0, 2), (0.01, 1), (0.01, 2)]
    solo = train(MLP, d, TrainConfig(lr=0.05, l2=0.01, epochs=1, batch_size=128), 2, progress=False)
    got = runs[3]["params"]["layers.0.weight"]
    assert float((got - solo.params["layers.0.weight"]).norm() / got.norm()) < 1e-5
    widths = train_grid(MLP, d, TC, "width", [8, 24], [0], progress=False)
    assert [r["params"]["layers.0.weight"].shape[0] for r in widths] == [8, 24]
    cnn = _configs(ModelConfig(kind="cnn", input_shape=(40,)), TC, "width", 16)[0]
    assert cnn.channels == (16, "M", 32, "M", 32, "M")  # 32,M,64,M,64,M scaled by 16/32


def test_measure_reports_the_radius_and_directional_rises(small_mnist1d):
    d = small_mnist1d
    r = train_grid(MLP, d, TC, "lr", [0.05, 0.1], [0], progress=False)[0]
    from isthmus.models import build_model

    model = build_model(MLP)
    m = measure(model, r["params"], d, examples=200, directions=3, probes=5)
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in r["params"].values()))
    assert abs(m["radius"] - float(norm)) < 1e-6 * float(norm)
    assert m["top_eigenvalue"] > 0 and m["trace"] > 0 and m["trace_stderr"] > 0
    # the rises, recomputed one direction at a time
    from isthmus.params import evaluate_one
    from isthmus.surface import filter_normalized_direction

    p = r["params"]
    x, y = d.x_train[:200], d.y_train[:200]
    base = evaluate_one(model, p, x, y)[0]
    rises = []
    for i in range(3):
        di = filter_normalized_direction(p, seed=0, index=i)
        rises.append(
            evaluate_one(model, {k: v + 0.25 * di[k] for k, v in p.items()}, x, y)[0] - base
        )
    assert abs(m["random_rise"] - sum(rises) / 3) < 1e-5
    radial = {k: (v * 1.25 if v.dim() > 1 else v) for k, v in p.items()}  # theta + 0.25 theta
    assert abs(m["radial_rise"] - (evaluate_one(model, radial, x, y)[0] - base)) < 1e-5


@pytest.mark.e2e
def test_the_study_command(tmp_path, capsys):
    from isthmus.cli import main

    out = tmp_path / "s"
    argv = ["study", "lr", "--values", "0.02", "0.2", "--seeds", "2", "--data", "digits"]
    assert (
        main([*argv, "--width", "16", "--epochs", "2", "--examples", "200", "--out", str(out)]) == 0
    )
    doc = json.loads((out / "study.json").read_text())
    assert doc["hyperparameter"] == "lr" and len(doc["rows"]) == 4 and len(doc["summary"]) == 2
    assert all(r["radius"] > 0 for r in doc["rows"])
    assert (out / "study_lr.png").stat().st_size > 10_000
    assert "top eigenvalue" in capsys.readouterr().out
    with pytest.raises(IsthmusError, match="two values"):
        run_study(MLP, None, TC, "lr", [0.1], [0])
