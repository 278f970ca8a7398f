"""Every capability that needs no plain chain of layers runs on the residual net (no norm,
BatchNorm, LayerNorm) and the transformer: lines, curves, AutoNEB, the orthogonal finder, planes,
trees, the Hessian, subspaces (join, grow, from scratch) and ensembles; dropout and noise
stability and the constructive paths refuse them and say why. Tiny nets on a small mnist1d
subset, a few steps each."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODELS, train_tiny, write_spec

from isthmus.curvature import hessian_operator, summarize
from isthmus.ensemble import member_logits, metrics
from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig, build_model, default_width, units_of
from isthmus.params import bn_subset, has_bn, lerp
from isthmus.paths import (
    FitConfig,
    connect,
    connect_dropout,
    connect_nets,
    connect_noise,
    theorem1_path,
    theorem2_path,
)
from isthmus.paths.connect import neb_config, orthogonal_config
from isthmus.stability import dropout_stability, noise_stability
from isthmus.subspace import evaluate_complex, grow_simplex, join, train_subspace
from isthmus.surface import evaluate_surface, slice_through
from isthmus.train import TrainConfig, train_population

MODELS = TINY_MODELS
WHY = {
    "resnet": "a residual net adds every block's output",
    "transformer": "mixes tokens by attention",
}
FIT = FitConfig(epochs=3, lr=0.05, batch_size=64, samples=2)
TOL = 1e-4  # float32 evaluation of the same point in another batching


@pytest.fixture(scope="module")
def data(tiny_mnist1d):
    return tiny_mnist1d


@pytest.fixture(scope="module", params=list(MODELS))
def nets(request, data):
    """(config, model, [three trained nets], their metrics), once per model kind: a population,
    BatchNorm nets one at a time."""
    cfg = MODELS[request.param]
    res = train_tiny(cfg, data, [0, 1, 2])
    return cfg, build_model(cfg), [r.params for r in res], [r.metrics for r in res]


def _close(a: float, b: float) -> bool:
    return math.isfinite(a) and abs(a - b) <= TOL * max(1.0, abs(b))


def _ends_reproduce_runs(result, metrics_a, metrics_b) -> None:
    """A path's endpoints are the runs: their losses are the runs' own (BatchNorm by the policy)."""
    assert all(math.isfinite(v) for v in result.train_loss + result.test_loss)
    assert _close(result.train_loss[0], metrics_a["train_loss"])
    assert _close(result.train_loss[-1], metrics_b["train_loss"])
    assert _close(result.test_loss[-1], metrics_b["test_loss"])


@pytest.mark.parametrize("method", ["linear", "bezier", "chain", "neb", "orthogonal"])
def test_paths_run_and_keep_their_ends(nets, data, method):
    _, model, (a, b, _), (ma, mb, _) = nets
    n = len(data.x_train)
    con = connect(
        model, a, b, data, method, fit=FIT, points=5, seed=0,
        neb=replace(neb_config(n, epochs=1, pivots=1, cycles=1, batch_size=64), grid=2),
        orthogonal=orthogonal_config(n, epochs=1, batch_size=64, depth=1), neb_batch_size=64,
    )  # fmt: skip
    _ends_reproduce_runs(con.result, ma, mb)
    _ends_reproduce_runs(con.line, ma, mb)
    if method in ("bezier", "chain"):  # the fit lowers the worst point of the line it starts on
        assert max(con.result.train_loss) <= max(con.line.train_loss) + TOL


def test_the_plane_through_three_nets_holds_them(nets, data):
    _, model, ps, ms = nets
    sl = slice_through(ps)
    (ax, _), (bx, _), (_, cy) = (sl.anchor_coords()[k] for k in ("A", "B", "C"))
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    s = evaluate_surface(model, sl, data, grid=2, ranges=[(ax, bx), (0.0, cy)], bn_x=bn_x)
    assert _close(s.train_loss[0][0], ms[0]["train_loss"])  # A at (0, 0)
    assert _close(s.train_loss[0][1], ms[1]["train_loss"])  # B at (m11, 0)
    assert all(math.isfinite(v) for row in s.test_loss for v in row)


def test_the_tree_of_autoneb_paths(nets, data):
    _, model, ps, ms = nets
    cfg = neb_config(len(data.x_train), epochs=1, pivots=1, cycles=1, batch_size=64)
    cfg = replace(cfg, grid=2)  # a coarse insertion test: tiny nets, few seconds
    bn = {"bn_x": bn_subset(data.x_train)} if has_bn(model) else {}
    tree, _ = connect_nets(model, ps, data, cfg, points=3, batch_size=64, eval_kw=bn)
    w = tree.weights
    assert len(tree.edges) == 2 and all(math.isfinite(e[2]) for e in tree.edges)
    for i in range(3):
        for j in range(i + 1, 3):  # every path through the tree is no worse than the direct one
            assert w[i, j] >= max(ms[i]["train_loss"], ms[j]["train_loss"]) - TOL
            route = tree.route(i, j)
            assert max(w[u, v] for u, v in zip(route, route[1:], strict=False)) <= w[i, j]


def test_the_hessian(nets, data):
    _, model, (a, *_), _ = nets
    s = summarize(model, a, data, top=2, examples=64, probes=2, trace=True, seed=0)
    assert s.converged and s.eigenvalues[0] >= s.eigenvalues[1]
    assert all(math.isfinite(v) for v in [*s.eigenvalues, s.trace.estimate])
    op = hessian_operator(model, a, data, examples=64)
    g = torch.Generator().manual_seed(0)
    u, v = (torch.randn(op.dim, generator=g, dtype=op.dtype) for _ in range(2))
    uhv, vhu = float(u @ op.matvec(v)), float(v @ op.matvec(u))
    assert abs(uhv - vhu) <= 1e-3 * (abs(uhv) + 1e-3)  # symmetric, as a Hessian is


def test_subspaces_join_grow_and_from_scratch(nets, data):
    cfg, model, (a, b, _), (ma, mb, _) = nets
    cx, _ = join(model, [a, b], data, connectors=1, cfg=FIT, seed=0, progress=False)
    ev = evaluate_complex(model, cx, data, samples=4, edge_points=3)
    assert _close(ev.solution_loss[0], ma["train_loss"])
    assert _close(ev.solution_loss[1], mb["train_loss"])
    assert all(math.isfinite(v) for v in ev.samples["train_loss"] + ev.connector_loss)
    grown, _ = grow_simplex(model, a, 1, data, FIT, seed=0, progress=False)
    ev = evaluate_complex(model, grown, data, samples=4, edge_points=3)
    assert _close(ev.solution_loss[0], ma["train_loss"]) and math.isfinite(ev.connector_loss[0])
    scratch, fit = train_subspace(cfg, data, 1, FIT, seed=0, progress=False)
    assert len(scratch.vertices) == 2 and all(math.isfinite(h["loss"]) for h in fit.history)


def test_ensembles_of_runs_and_path_points(nets, data):
    _, model, (a, b, c), ms = nets
    mid = lerp(a, b, 0.5)  # a net on the line between two runs
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    logits = member_logits(model, [a, b, c, mid], data.x_test, bn_x=bn_x)
    m = metrics(logits, data.y_test)
    for k in range(3):  # each run scores as it did after training
        assert abs(m.member_accuracy[k] - ms[k]["test_acc"]) <= 1 / len(data.y_test)
    assert m.nll <= sum(m.member_nll) / 4 + 1e-6 and 0 <= m.disagreement <= 1


@pytest.mark.parametrize("name", list(MODELS))
def test_chain_features_refuse_them_and_say_why(name, data):
    cfg = MODELS[name]
    model = build_model(cfg)
    p = {k: v.detach() for k, v in model.state_dict().items()}
    calls = [
        ("dropout stability", lambda: dropout_stability(model, p, data, draws=2)),
        ("noise stability", lambda: noise_stability(model, p, data)),
        ("the Theorem 1 path", lambda: connect_dropout(model, p, p, data)),
        ("the Theorem 2 path", lambda: connect_noise(model, p, p, data)),
        ("the Theorem 1 path", lambda: connect(model, p, p, data, "dropout")),
        ("the Theorem 2 path", lambda: connect(model, p, p, data, "noise")),
        ("the constructive paths", lambda: theorem1_path(p, p, units_of(model), {}, {})),
        ("the constructive paths", lambda: theorem2_path(p, p, units_of(model), {}, {})),
    ]
    for feature, call in calls:
        with pytest.raises(IsthmusError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f"{feature} need")
        assert "needs a plain chain of layers: its theorems" in msg or (
            "need a plain chain of layers: their theorems" in msg
        )
        if "Theorem" in feature or "stability" in feature:  # from the model: why, what works
            assert WHY[cfg.kind] in msg and "curves, AutoNEB" in msg and "subspaces" in msg, msg
        else:  # from the unit description alone: the place that breaks the chain
            assert ("skip connection" if cfg.kind == "resnet" else "pos") in msg, msg


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet", "transformer"])
def test_train_and_subspace_take_the_library_default_width(kind, data):
    from isthmus.cli import build_parser
    from isthmus.cli._model import model_config

    assert (default_width("resnet"), default_width("transformer"), default_width("mlp")) == (
        1,
        64,
        256,
    )
    for argv in (["train", "--out", "x"], ["subspace", "--from-scratch", "1", "--out", "x"]):
        args = build_parser().parse_args([*argv, "--model", kind])
        assert model_config(args, data).width == default_width(kind)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_cli_curve_and_subspace_on_the_new_models(tmp_path, capsys):
    from isthmus.cli import main
    from isthmus.data import load
    from isthmus.io import read_json

    digits = load("digits")  # the commands read the whole data set: the smallest built-in one
    cfg = ModelConfig(kind="resnet", depth=1, width=1, layernorm=True, input_shape=(64,))
    runs, spec = tmp_path / "r", {"name": "digits", "root": None, "seed": 0}
    train_population(cfg, digits, TrainConfig(epochs=1), [0, 1], out=runs, data_spec=spec,
                     progress=False)  # fmt: skip
    a, b = str(runs / "0"), str(runs / "1")
    out = tmp_path / "curve"
    argv = ["connect", a, b, "--method", "bezier", "--epochs", "1", "--points", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    doc = read_json(out / "path.json")
    assert doc["method"] == "bezier" and all(math.isfinite(v) for v in doc["train_loss"])
    out = tmp_path / "scratch"
    argv = ["subspace", "--from-scratch", "1", "--model", "transformer", "--depth", "1",
            "--width", "8", "--heads", "2", "--patch", "8", "--epochs", "1", "--eval-samples",
            "2", "--edge-points", "2", "--data", "digits", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    doc = read_json(out / "subspace.json")
    assert doc["model"]["kind"] == "transformer" and doc["model"]["heads"] == 2
    assert main(["stability", a, "--out", str(tmp_path / "s")]) == 2
    assert "needs a plain chain of layers" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sweeps

SPEC = """
[data]
name = "digits"

[[train]]
name = "nets"
seeds = [0, 1]
depth = 1
epochs = 1
{settings}
[train.grid]
model = {models}

[[connect]]
name = "lines"
runs = "nets"
method = "linear"
points = 3
"""


def _spec(tmp_path, models: str = '["resnet", "transformer"]', **settings) -> Path:
    """A spec training `models` with the given settings (TOML text: heads="2")."""
    settings = {"heads": "2", "patch": "8"} | settings
    lines = "\n".join(f"{k} = {v}" for k, v in settings.items())
    return write_spec(tmp_path, SPEC.format(settings=lines, models=models))


def test_a_sweep_sets_the_new_models_fields_and_their_default_widths(tmp_path):
    from isthmus.sweep import load_spec, plan
    from isthmus.sweep.spec import check_models, configs

    spec = load_spec(_spec(tmp_path, '["mlp", "resnet", "transformer"]'))
    pts = spec.groups[0].points
    widths = [(p["model"], p["width"]) for p in pts]
    assert widths == [("mlp", 256), ("resnet", 1), ("transformer", 64)]  # as `isthmus train`
    check_models(spec, (64,), 10)
    mc, _ = configs(pts[2], (64,), 10)
    assert (mc.kind, mc.width, mc.heads, mc.patch) == ("transformer", 64, 2, 8)
    assert len(plan(spec)) == 3 + 3  # a population per model kind, a line per kind
    ln = load_spec(_spec(tmp_path, '["resnet"]', layernorm="true")).groups[0].points[0]
    assert configs(ln, (64,), 10)[0].layernorm is True
    assert load_spec(_spec(tmp_path, '["resnet"]', width="2")).groups[0].points[0]["width"] == 2


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("layernorm", '"yes"', "key 'layernorm': expected bool, got str"),
        ("heads", "0", "key 'heads': must be >= 1"),
        ("patch", "1.5", "key 'patch': expected int, got float"),
        ("width", "0", "key 'width': must be >= 1"),
    ],
)
def test_bad_new_model_keys_name_the_key_and_the_fix(tmp_path, key, value, why):
    from isthmus.sweep import load_spec

    path = _spec(tmp_path, **{key: value})
    with pytest.raises(IsthmusError) as e:
        load_spec(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: [[train]] 'nets'") and why in msg and "fix: " in msg, msg


def test_a_new_model_point_the_model_refuses_is_named(tmp_path):
    from isthmus.sweep import load_spec
    from isthmus.sweep.spec import check_models

    spec = load_spec(_spec(tmp_path, '["mlp"]', layernorm="true"))
    with pytest.raises(IsthmusError, match=r"'nets', point 0 \(model=mlp\).*layernorm applies"):
        check_models(spec, (64,), 10)
    spec = load_spec(_spec(tmp_path, '["transformer"]', width="9"))
    with pytest.raises(IsthmusError, match=r"'nets', point 0 \(model=transformer\).*heads"):
        check_models(spec, (64,), 10)


@pytest.mark.e2e
def test_a_sweep_trains_and_connects_the_new_models(tmp_path):
    from isthmus.sweep import run_sweep

    res = run_sweep(_spec(tmp_path), tmp_path / "out", workers=1, progress=False)
    assert res.counts == {"done": 4, "skipped": 0, "failed": 0, "blocked": 0}
    lines = [r for r in res.rows if r["kind"] == "connect"]
    assert len(lines) == 2 and all(math.isfinite(r["barrier"]) for r in lines)
