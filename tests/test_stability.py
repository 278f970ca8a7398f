"""Dropout stability: theta_i, the search, its result file (Kuditipudi et al. 2019, section 3)."""

from __future__ import annotations

import json

import pytest
import torch

from isthmus.errors import IsthmusError
from isthmus.models import ConvNet, ConvPlan, ModelConfig, build_model, put, take, units_of
from isthmus.params import evaluate, params_of, to
from isthmus.stability import (
    DropoutLosses,
    DropoutStability,
    NoiseStability,
    default_r,
    dropout_loss_curve,
    dropout_params,
    dropout_stability,
    load_stability,
    noise_stability,
    save_stability,
    validate_kept,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(mnist1d):
    return mnist1d.subset(200, 50, seed=1)


def _mlp(width=8, depth=3):
    return build_model(ModelConfig(kind="mlp", depth=depth, width=width, input_shape=(40,)))


def _cnn(fc=(5,)):
    return ConvNet((1, 40), ConvPlan(channels=(4, "M", 6, "M"), fc=fc), 10)


def _f64(model):
    return model.double(), to(params_of(model), dtype=torch.float64)


def _loss(model, p, data):
    return float(evaluate(model, [p], data.x_train, data.y_train, strategy="loop").loss[0])


def _random_kept(units, i, g):
    return {
        la.name: sorted(torch.randperm(la.size, generator=g)[: la.size // 2].tolist())
        for la in units.layers[i - 1 :]
    }


def _duplicate_halves(params, units):
    """Units k and k + h/2 get identical incoming weights and identical outgoing weights, bottom up,
    so keeping one unit of every pair with r = 2 leaves the function exactly unchanged."""
    p = dict(params)
    for la in units.layers:
        h = la.size // 2
        first, second = torch.arange(h), torch.arange(h, 2 * h)
        for s in la.incoming + la.outgoing:
            p[s.name] = put(p[s.name], s, second, take(p[s.name], s, first))
    return p


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_dropping_units_without_outgoing_weights_changes_nothing(make, tiny):
    model, p = _f64(make())
    units = units_of(model)
    g = torch.Generator().manual_seed(3)
    kept = _random_kept(units, 1, g)
    # zero the outgoing weights of the units that will be dropped: then theta_1 with r = 1 is theta
    q = dict(p)
    for la in units.layers:
        drop = torch.tensor(sorted(set(range(la.size)) - set(kept[la.name])))
        for s in la.outgoing:
            q[s.name] = put(q[s.name], s, drop, torch.zeros_like(take(q[s.name], s, drop)))
    theta = dropout_params(q, units, kept, {k: 1.0 for k in kept})
    assert all(torch.equal(theta[k], q[k]) for k in q)


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_dropout_params_equal_masking_activations(make, tiny):
    """Scaling outgoing weights by r m_u is the same as multiplying the activation x_u by r m_u."""
    model, p = _f64(make())
    units, maps = units_of(model), model.layer_maps()
    x = tiny.x_train[:32].double()
    g = torch.Generator().manual_seed(5)
    for i in range(1, units.depth):
        kept = _random_kept(units, i, g)
        r = default_r(units, kept)
        model.eval()
        out = torch.func.functional_call(model, dropout_params(p, units, kept, r), (x,))
        h = maps.inputs(x)
        for j in range(1, units.depth):
            h = torch.relu(maps.pre(j, p, h))
            la = units.layers[j - 1]
            if la.name in kept:
                m = torch.zeros(la.size, dtype=h.dtype)
                m[kept[la.name]] = r[la.name]
                h = h * m.reshape(1, -1, *([1] * (h.dim() - 2)))
        ref = maps.pre(units.depth, p, h)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_dropout_params_takes_the_default_factor_for_layers_r_leaves_out():
    model, p = _f64(_mlp(width=8, depth=4))
    units = units_of(model)
    kept = _random_kept(units, 1, torch.Generator().manual_seed(3))
    full = {k: 1.5 * v for k, v in default_r(units, kept).items()}
    first = next(iter(kept))
    partial = {first: full[first]}  # the other layers' factors left to the default
    want = dropout_params(p, units, kept, {**default_r(units, kept), **partial})
    got = dropout_params(p, units, kept, partial)
    assert len(kept) > 1 and all(torch.equal(got[k], want[k]) for k in want)
    assert not all(torch.equal(got[k], dropout_params(p, units, kept, full)[k]) for k in got)


@pytest.mark.parametrize("make", [lambda: _mlp(8, 4), lambda: _cnn(fc=(6,))])
def test_duplicated_halves_are_exactly_zero_dropout_stable(make, tiny):
    model, p = _f64(make())
    units = units_of(model)
    p = _duplicate_halves(p, units)
    base = _loss(model, p, tiny)
    g = torch.Generator().manual_seed(0)
    for i in range(1, units.depth):
        # one unit of every pair, chosen at random
        kept = {
            la.name: sorted(
                k + (la.size // 2) * int(torch.randint(2, (1,), generator=g))
                for k in range(la.size // 2)
            )
            for la in units.layers[i - 1 :]
        }
        validate_kept(units, i, kept)
        assert abs(_loss(model, dropout_params(p, units, kept), tiny) - base) < 1e-12
    res = dropout_stability(model, p, tiny, draws=256, swaps=64, seed=0)
    assert res.epsilon <= 1e-6
    assert abs(res.loss - base) < 1e-12
    # equal importances sit next to each other in the ranking: the paired greedy rule keeps one of
    # every duplicated pair, at every start layer
    greedy = dropout_stability(model, p, tiny, strategy="greedy")
    assert greedy.epsilon <= 1e-9


def test_search_result_structure_and_epsilon(tiny):
    model, p = _f64(_mlp(width=7, depth=4))  # odd width: floor(7/2) = 3 kept, r = 7/3
    units = units_of(model)
    res = dropout_stability(model, p, tiny, draws=16, swaps=16, seed=2)
    assert [c.i for c in res.by_start_layer] == [1, 2, 3]
    for c in res.by_start_layer:
        validate_kept(units, c.i, c.kept)
        assert all(len(v) == 3 for v in c.kept.values())
        assert c.r == pytest.approx({k: 7 / 3 for k in c.kept})
        # the reported loss is L(theta_i) evaluated singly
        assert c.loss == pytest.approx(_loss(model, dropout_params(p, units, c.kept, c.r), tiny))
    assert res.loss == pytest.approx(_loss(model, p, tiny))
    assert res.epsilon == pytest.approx(max(c.loss for c in res.by_start_layer) - res.loss)
    assert res.search["strategy"] == "auto" and res.search["seed"] == 2


def test_swap_never_worse_than_its_start_and_auto_takes_the_best(tiny):
    model, p = _f64(_mlp(width=10))
    res = dropout_stability(model, p, tiny, draws=8, swaps=64, seed=1)
    best = res.search["best_loss"]
    for k, c in enumerate(res.by_start_layer):
        start = min(best["random"][k], best["greedy"][k])
        assert best["swap"][k] <= start
        assert c.loss == min(best["random"][k], best["greedy"][k], best["swap"][k])
    # swap alone starts from the greedy choice
    alone = dropout_stability(model, p, tiny, strategy="swap", swaps=32, seed=1)
    for k, c in enumerate(alone.by_start_layer):
        assert c.loss <= alone.search["best_loss"]["greedy"][k]


def test_fitted_r_is_never_worse_and_reported(tiny):
    model, p = _f64(_mlp(width=8))
    units = units_of(model)
    plain = dropout_stability(model, p, tiny, strategy="greedy")
    fitted = dropout_stability(model, p, tiny, strategy="greedy", fit_r=True)
    for a, b, m in zip(
        plain.by_start_layer, fitted.by_start_layer, fitted.search["r_multiplier"], strict=True
    ):
        assert a.kept == b.kept and b.loss <= a.loss
        assert b.r == pytest.approx({k: v * m for k, v in default_r(units, b.kept).items()})
        assert b.loss == pytest.approx(_loss(model, dropout_params(p, units, b.kept, b.r), tiny))


def test_search_is_deterministic_per_seed(tiny):
    model = _cnn(fc=())
    p = params_of(model)
    a = dropout_stability(model, p, tiny, draws=8, swaps=8, seed=4, fit_r=True)
    b = dropout_stability(model, p, tiny, draws=8, swaps=8, seed=4, fit_r=True)
    assert a.to_json() == b.to_json()


def test_batched_evaluation_of_draws_equals_single(tiny):
    model, p = _f64(_mlp(width=8))
    units = units_of(model)
    g = torch.Generator().manual_seed(0)
    kepts = [_random_kept(units, 1 + n % 2, g) for n in range(40)]
    ev = DropoutLosses(model, p, units, tiny, batch_size=64)
    batched = ev(kepts)
    ev.strategy = "vmap"
    vm = ev(kepts)
    single = torch.tensor(
        [_loss(model, dropout_params(p, units, k), tiny) for k in kepts], dtype=torch.float64
    )
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vm, single, rtol=1e-12, atol=1e-12)


def test_validate_kept_rejects_bad_sets():
    units = units_of(_mlp(width=8))
    ok = {"layers.0": [0, 1, 2, 3], "layers.1": [4, 5, 6, 7]}
    validate_kept(units, 1, ok)
    validate_kept(units, 2, {"layers.1": [0]})
    bad = [
        (1, {"layers.0": [0, 1, 2, 3, 4], "layers.1": [0]}),  # more than floor(8/2)
        (1, {"layers.1": [0]}),  # layer 1 missing
        (2, ok),  # layer 0 does not belong to start layer 2
        (2, {"layers.1": [0, 0]}),  # repeated unit
        (2, {"layers.1": []}),
        (2, {"layers.1": [8]}),  # out of range
    ]
    for i, kept in bad:
        with pytest.raises(IsthmusError):
            validate_kept(units, i, kept)


def test_refuses_batchnorm_bad_strategy_and_one_unit_layers(tiny):
    bn = build_model(ModelConfig(kind="cnn", channels=(4, "M"), batchnorm=True, input_shape=(40,)))
    with pytest.raises(IsthmusError, match="BatchNorm"):
        dropout_stability(bn, params_of(bn), tiny, strategy="random", draws=2)
    m = _mlp()
    with pytest.raises(IsthmusError, match="strategy"):
        dropout_stability(m, params_of(m), tiny, strategy="best")
    one = build_model(ModelConfig(kind="mlp", depth=3, width=(4, 1), input_shape=(40,)))
    with pytest.raises(IsthmusError, match="1 unit"):
        dropout_stability(one, params_of(one), tiny, strategy="random", draws=2)


def test_json_round_trip(tmp_path, tiny):
    model, p = _f64(_mlp(width=6))
    res = dropout_stability(model, p, tiny, draws=4, swaps=4, fit_r=True)
    path = save_stability(tmp_path, res)
    back = load_stability(tmp_path)
    assert back == res
    d = json.loads(path.read_text())
    for key in ("kind", "epsilon", "loss", "by_start_layer", "search"):
        assert key in d
    assert set(d["by_start_layer"][0]) == {"i", "loss", "kept", "r"}
    assert d["search"]["strategy"] == "auto" and d["search"]["draws"] == 4
    assert isinstance(back, DropoutStability)
    noise = noise_stability(model, p, tiny, n_examples=8, n_proj=2)
    back = load_stability(save_stability(tmp_path / "n.json", noise))
    assert isinstance(back, NoiseStability) and back.kind == "noise"
    assert back.layer_cushion == noise.layer_cushion and back.search == noise.search
    d = json.loads((tmp_path / "n.json").read_text())
    assert d["kind"] == "noise" and d["by_start_layer"] == [] and "layer_cushion" in d
    (tmp_path / "bad.json").write_text('{"kind": "dropout", "epsilon": 0, "loss": 0}')
    with pytest.raises(IsthmusError, match="by_start_layer"):
        load_stability(tmp_path / "bad.json")
    d = json.loads(path.read_text())
    d["by_start_layer"][0]["r"] = {"a": 1.0}  # factors for layers that have no kept set
    (tmp_path / "bad_r.json").write_text(json.dumps(d))
    with pytest.raises(IsthmusError, match=r"bad_r.json: by_start_layer\[0\].*'r' names"):
        load_stability(tmp_path / "bad_r.json")


def test_loss_curve_keeps_everything_at_rate_one(tiny):
    model, p = _f64(_mlp(width=8))
    curve = dropout_loss_curve(model, p, tiny, [0.5, 1.0], draws=3, seed=0)
    assert curve["keep_rates"] == [0.5, 1.0] and len(curve["losses"][0]) == 3
    assert all(v == pytest.approx(curve["loss"], abs=1e-12) for v in curve["losses"][1])
    assert curve["std"][1] == pytest.approx(0.0, abs=1e-12)
    assert curve["min"][0] <= curve["mean"][0] <= curve["max"][0]
    again = dropout_loss_curve(model, p, tiny, [0.5, 1.0], draws=3, seed=0)
    assert again == curve


@pytest.mark.e2e
def test_cli_stability_dropout(tmp_path, capsys):
    from isthmus.cli import main

    run = tmp_path / "run"
    argv = ["train", "--data", "digits", "--width", "8", "--epochs", "1", "--out", str(run)]
    assert main(argv) == 0
    out = tmp_path / "stab"
    argv = ["stability", str(run), "--kind", "dropout", "--draws", "8", "--swaps", "8"]
    argv += ["--curve-draws", "2", "--fit-r", "--seed", "3", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = load_stability(out)
    assert f"dropout epsilon {res.epsilon:.4f}" in printed
    assert res.kind == "dropout" and res.search["seed"] == 3 and res.search["fit_r"]
    assert [c.i for c in res.by_start_layer] == [1, 2]
    assert len(res.keep_rate_curve["mean"]) == 10
    assert (out / "stability.png").is_file()
    assert (out / ".checkpoint" / "dropout_search.json").is_file()
    assert main([*argv, "--resume"]) == 0  # a finished search: every start layer is kept
    assert load_stability(out).by_start_layer == res.by_start_layer
    assert main(["stability", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_an_interrupted_search_resumes_to_the_same_result(tiny, tmp_path):
    model, p = _f64(_mlp(width=7, depth=4))
    kw = dict(draws=8, swaps=8, seed=3, fit_r=True)
    ck = tmp_path / "search.json"
    full = dropout_stability(model, p, tiny, checkpoint=ck, **kw)
    st = json.loads(ck.read_text())
    assert sorted(c["i"] for c in st["state"]["choices"]) == [1, 2, 3]
    # as if stopped after the top start layer (searched first): keep only its state
    top = [c for c in st["state"]["choices"] if c["i"] == 3]
    st["state"]["choices"] = top
    st["state"]["upper"] = top[0]["kept"]
    for name, vals in st["state"]["best_by"].items():
        st["state"]["best_by"][name] = [None, None, vals[2]]
    ck.write_text(json.dumps(st))
    resumed = dropout_stability(model, p, tiny, checkpoint=ck, resume=True, **kw)
    assert resumed.to_json()["by_start_layer"] == full.to_json()["by_start_layer"]
    assert resumed.epsilon == full.epsilon
    with pytest.raises(IsthmusError, match="another dropout stability"):
        dropout_stability(model, p, tiny, checkpoint=ck, resume=True, **{**kw, "seed": 4})
    with pytest.raises(IsthmusError, match="no dropout stability checkpoint"):
        dropout_stability(model, p, tiny, checkpoint=tmp_path / "x.json", resume=True, **kw)


@pytest.mark.parametrize(
    "size, q, count",
    [(7, 0.5, 3), (8, 0.5, 4), (10, 0.7, 7), (20, 0.55, 11), (3, 0.1, 1), (5, 1.0, 5)],
)
def test_keep_rate_keeps_at_most_floor_q_h_units(size, q, count):
    """|S| = floor(q h) (at least 1), never rounded up: 3 of 7 units at q = 0.5, not 4."""
    from isthmus.models import Layer
    from isthmus.stability.versions import kept_count, random_kept

    assert kept_count(size, q) == count
    kept = random_kept([Layer("h", size, (), ())], torch.Generator().manual_seed(0), q)
    assert len(kept["h"]) == count == len(set(kept["h"]))


def test_loss_curve_at_half_of_an_odd_width_keeps_the_floor(tiny):
    """At q = 0.5 with 7 units the curve's dropout versions keep 3 units with r = 7/3: every draw's
    loss is the loss of such a version (the same draws, recomputed)."""
    from isthmus.seeding import generator
    from isthmus.stability.versions import random_kept

    model, p = _f64(_mlp(width=7))
    units = units_of(model)
    curve = dropout_loss_curve(model, p, tiny, [0.5], draws=3, seed=2)
    g = generator(2, 0, 7)  # the curve's stream for its first keep rate
    for loss in curve["losses"][0]:
        kept = random_kept(units.layers, g, 0.5)
        assert all(len(v) == 3 for v in kept.values())
        assert loss == pytest.approx(_loss(model, dropout_params(p, units, kept), tiny), rel=1e-12)
