"""The hyperparameter study: the grid trains as populations, every net is measured, and the
command writes study.json and its figure."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_MODELS

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


# ----------------------------------------------------------------------------- other kinds

TINY = {k: TINY_MODELS[k] for k in ("resnet-bn", "resnet-ln", "transformer")}
SMALL = dict(examples=64, directions=2, probes=2, measure_every=0, progress=False)


@pytest.mark.parametrize("name", list(TINY))
def test_the_study_measures_residual_nets_and_transformers(small_mnist1d, name):
    res = run_study(TINY[name], small_mnist1d, TC, "lr", [0.02, 0.05], [0], **SMALL)
    assert [r["value"] for r in res.rows] == [0.02, 0.05]
    for r in res.rows:
        assert r["radius"] > 0 and r["top_eigenvalue"] > 0, r
        assert all(math.isfinite(r[q]) for q in res.QUANTITIES), r
    assert res.settings["model"]["kind"] == "resnet" if "resnet" in name else "transformer"


def test_a_width_is_each_kinds_own(small_mnist1d):
    d = small_mnist1d
    res = train_grid(TINY["resnet-ln"], d, TC, "width", [1, 2], [0], progress=False)
    assert [r["params"]["stem.weight"].shape[0] for r in res] == [16, 32]  # 16 x multiplier
    tf = TINY["transformer"]
    res = run_study(tf, d, TC, "width", [8, 16], [0], **SMALL)
    assert [r["value"] for r in res.rows] == [8, 16] and all(r["radius"] > 0 for r in res.rows)
    assert _configs(tf, TC, "width", 6)[0].width == 6  # the model dimension
    with pytest.raises(IsthmusError, match=r"study width 5 .* not divisible by --heads 2"):
        _configs(tf, TC, "width", 5)
    with pytest.raises(IsthmusError, match="convfc's layer sizes are fixed: study lr or l2"):
        _configs(ModelConfig(kind="convfc", input_shape=(40,)), TC, "width", 16)
    with pytest.raises(IsthmusError, match="whole numbers >= 1, got 2.5"):
        _configs(MLP, TC, "width", 2.5)


def test_the_study_keeps_its_mlp_width_and_takes_the_others_defaults(small_mnist1d):
    from isthmus.cli import build_parser
    from isthmus.cli._model import model_config

    argv = ["study", "lr", "--values", "0.1", "0.2", "--out", "x"]
    widths = {}
    for kind in ("mlp", "cnn", "resnet", "transformer"):
        args = build_parser().parse_args([*argv, "--model", kind])
        widths[kind] = model_config(args, small_mnist1d).width
    assert widths == {"mlp": 128, "cnn": 256, "resnet": 1, "transformer": 64}
    args = build_parser().parse_args([*argv, "--width", "32"])
    assert model_config(args, small_mnist1d).width == 32


def test_a_batchnorm_net_is_measured_by_the_policy(small_mnist1d):
    """Every point gets its statistics recomputed on the fixed training subset: the rises match
    the policy's own evaluation, and the radial rise is the head's alone (BatchNorm after every
    convolution makes the net blind to the scale of the convolutions)."""
    from isthmus.models import build_model
    from isthmus.params import bn_subset, evaluate_one
    from isthmus.surface import filter_normalized_direction

    d, cfg = small_mnist1d, TINY["resnet-bn"]
    tc = TrainConfig(lr=0.1, epochs=3, batch_size=64)  # confident enough to feel the head's scale
    p = train(cfg, d, tc, 0, progress=False).params
    model = build_model(cfg)
    m = measure(model, p, d, examples=64, directions=2, probes=2)
    x, y, bn_x = d.x_train[:64], d.y_train[:64], bn_subset(d.x_train)

    def loss(q) -> float:
        return evaluate_one(model, q, x, y, bn_x=bn_x)[0]

    base = loss(p)
    dirs = [filter_normalized_direction(p, seed=0, index=i) for i in range(2)]
    rises = [loss({k: v + 0.25 * di[k] if v.is_floating_point() else v for k, v in p.items()})
             - base for di in dirs]  # fmt: skip
    assert abs(m["random_rise"] - sum(rises) / 2) < 1e-5
    head = {**p, "head.weight": 1.25 * p["head.weight"]}
    assert abs(loss(head) - base) > 0.01  # the head's own effect: far from nothing
    assert abs(m["radial_rise"] - (loss(head) - base)) < 1e-4, (m["radial_rise"], loss(head))
    assert m["top_eigenvalue"] > 0 and math.isfinite(m["trace"])


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


@pytest.mark.e2e
def test_the_study_command_takes_every_model_kind(tmp_path, capsys):
    from isthmus.cli import main

    out = tmp_path / "t"
    argv = ["study", "width", "--values", "8", "16", "--seeds", "1", "--data", "digits",
            "--model", "transformer", "--depth", "1", "--heads", "2", "--patch", "8",
            "--epochs", "1", "--examples", "100", "--measure-every", "0"]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 0
    doc = json.loads((out / "study.json").read_text())
    assert doc["settings"]["model"]["kind"] == "transformer" and doc["values"] == [8, 16]
    assert all(r["top_eigenvalue"] > 0 for r in doc["rows"])
    assert "width 16:" in capsys.readouterr().out
    bad = [*argv[:3], "8", "12", *argv[5:]]
    bad[bad.index("--heads") + 1] = "8"
    assert main([*bad, "--out", str(tmp_path / "bad")]) == 2
    assert "study width 12" in capsys.readouterr().err
