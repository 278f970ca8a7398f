"""Noise stability: every quantity against an explicit-Jacobian computation on small nets.

The explicit side builds each layer from the model's own modules (or weight matrices) and the full
Jacobian with torch.autograd.functional.jacobian; the library uses jvps only.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd.functional import jacobian

from isthmus.errors import IsthmusError
from isthmus.models import ConvNet, ConvPlan, ModelConfig, build_model, units_of
from isthmus.params import evaluate, params_of, to
from isthmus.stability import (
    jacobian_frobenius_sq,
    noise_response,
    noise_stability,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def few(mnist1d):
    return mnist1d.subset(24, 8, seed=2)


def _f64(model):
    model = model.double().eval().requires_grad_(False)
    return model, to(params_of(model), dtype=torch.float64)


def _finite(t):
    """Ratios are undefined (nan) for an example whose x^i or Jacobian is 0; both sides skip them."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return t[torch.isfinite(t)]


def _mlp(bias=True, depth=4, width=(6, 5, 7)):
    return build_model(
        ModelConfig(kind="mlp", depth=depth, width=width, bias=bias, input_shape=(40,))
    )


def _cnn():
    # a leading pool, two convs with pools, a dense hidden layer
    return ConvNet((1, 40), ConvPlan(channels=("M", 3, "M", 4, "M"), fc=(5,)), 10)


# ----------------------------------------------------------------------------- explicit layers


def _explicit_layers(model):
    """[x^0 prep, layer_1, ..., layer_d] as closures over the model's own modules (batch-first)."""
    if hasattr(model, "layers"):  # MLP
        prep = [lambda x: x.flatten(1)]
        return prep + [lambda h, m=m: m(h) for m in model.layers]
    pool = lambda z: F.max_pool1d(z, 2, 2)  # noqa: E731
    layers = [lambda x: pool(x.reshape(len(x), 1, 40))]
    layers += [lambda h, c=c: pool(c(h)) for c in model.convs]
    return layers + [lambda h, m=m: m(h.flatten(1)) for m in model.fcs]


def _explicit_forward(model, x):
    fs = _explicit_layers(model)
    xs, zs = [fs[0](x)], []
    for j, f in enumerate(fs[1:], start=1):
        zs.append(f(xs[-1]))
        if j < len(fs) - 1:
            xs.append(torch.relu(zs[-1]))
    return xs, zs


def _explicit_map(model, i, j):
    """x^i -> z^j for ONE example (unbatched), for jacobian()."""
    fs = _explicit_layers(model)

    def m(h):
        h = h[None]
        for k in range(i + 1, j + 1):
            z = fs[k](h)
            h = torch.relu(z)
        return z[0]

    return m


@pytest.mark.parametrize(
    "make",
    [
        _mlp,
        lambda: _mlp(bias=False),
        _cnn,
        lambda: ConvNet((2, 6, 6), ConvPlan(channels=(3, "M", 2)), 4),
    ],
)
def test_layer_maps_compose_to_the_model(make):
    model, p = _f64(make())
    maps = model.layer_maps()
    x = torch.randn(5, *getattr(model, "input_shape", (40,)), dtype=torch.float64)
    xs, zs = maps.forward(p, x)
    torch.testing.assert_close(zs[-1], model(x), rtol=1e-12, atol=1e-12)
    assert [la.name for la in units_of(model).layers] == [s.name for s in maps.stages[:-1]]
    for j in range(1, maps.depth):  # x^j has one unit/channel per hidden unit
        assert xs[j].shape[1] == units_of(model).layers[j - 1].size


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_quantities_match_explicit_jacobians(make, few):
    model, p = _f64(make())
    res = noise_stability(model, p, few, n_examples=None, n_proj=None, seed=0)
    x = few.x_train.double()
    with torch.no_grad():
        xs, zs = _explicit_forward(model, x)
    d = len(zs)
    norm = lambda t: t.flatten(1).norm(dim=1)  # noqa: E731
    ex = res.to_json()

    # layer cushion: ||W_j x^{j-1}|| / (||W_j||_F ||x^{j-1}||), W_j the bias-free linear operator
    for j in range(1, d + 1):
        lin = _linear_part(model, j)
        wx = torch.stack([lin(v) for v in xs[j - 1]])
        fro = torch.linalg.matrix_norm(jacobian(lin, xs[j - 1][0]).reshape(wx[0].numel(), -1))
        mu = _finite(norm(wx) / (fro * norm(xs[j - 1]))).min()
        assert ex["layer_cushion"][j - 1] == pytest.approx(float(mu), rel=1e-10)

    # interlayer cushion with the full Jacobian of x^i -> z^j at every example
    for rec in ex["interlayer_cushion"]:
        i, j = rec["i"], rec["j"]
        m = _explicit_map(model, i, j)
        ratios = []
        for v in xs[i]:
            J = jacobian(m, v).reshape(zs[j - 1][0].numel(), v.numel())
            ratios.append(float((J @ v.flatten()).norm() / (J.norm() * v.norm())))
        ratios = _finite(ratios)
        assert rec["min"] == pytest.approx(float(ratios.min()), rel=1e-10)
        assert rec["mean"] == pytest.approx(float(ratios.mean()), rel=1e-10)
    assert len(ex["interlayer_cushion"]) == d * (d - 1) // 2

    # activation contraction: max ||z^j|| / ||relu(z^j)|| over examples and hidden layers
    c = max(float(_finite(norm(zs[j - 1]) / norm(xs[j])).max()) for j in range(1, d))
    assert ex["activation_contraction"] == pytest.approx(c, rel=1e-12)

    # eps_noise from those quantities, and the loss is the whole-training-split loss
    mu_from = [min(r["min"] for r in ex["interlayer_cushion"] if r["i"] == i) for i in range(1, d)]
    prod = min(ex["layer_cushion"][i - 1] * mu_from[i - 1] for i in range(1, d))
    n_min = min(xs[i][0].numel() for i in range(1, d))
    eps = c * d**1.5 * float(norm(zs[-1]).max()) / (math.sqrt(n_min) * prod)
    assert res.epsilon == pytest.approx(eps, rel=1e-10)
    ref = evaluate(model, [p], few.x_train, few.y_train).loss[0]
    assert res.loss == pytest.approx(float(ref), rel=1e-12)


def _linear_part(model, j):
    """W_j as a map on one example (no bias, no pooling)."""
    if hasattr(model, "layers"):
        w = model.layers[j - 1].weight
        return lambda v: w @ v.flatten()
    n = len(model.convs)
    if j <= n:
        w = model.convs[j - 1].weight
        return lambda v: F.conv1d(v[None], w, None, padding=1)[0]
    w = model.fcs[j - 1 - n].weight
    return lambda v: w @ v.flatten()


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_noise_response_matches_explicit(make, few):
    model, p = _f64(make())
    x = few.x_train[:6].double()
    with torch.no_grad():
        xs, zs = _explicit_forward(model, x)
    d = len(zs)
    g = torch.Generator().manual_seed(1)
    for i in range(1, d):
        eta = torch.randn(xs[i].shape, generator=g, dtype=torch.float64)
        r = noise_response(model, p, x, i, eta)
        for k, j in enumerate(range(i + 1, d + 1)):
            m = _explicit_map(model, i, j)
            for n in range(len(x)):
                a, b = m(xs[i][n]), m(xs[i][n] + eta[n])
                J = jacobian(m, xs[i][n]).reshape(a.numel(), -1)
                res = (b - a).flatten() - J @ eta[n].flatten()
                assert float(r["residual"][k, n]) == pytest.approx(
                    float(res.norm()), rel=1e-9, abs=1e-12
                )
                if j < d:
                    a, b = torch.relu(a), torch.relu(b)
                if a.norm() > 0:
                    rel = (b - a).norm() / a.norm()
                    assert float(r["relative_change"][k, n]) == pytest.approx(float(rel), rel=1e-10)
                else:
                    assert math.isnan(float(r["relative_change"][k, n]))
    with pytest.raises(IsthmusError):
        noise_response(model, p, x, d, eta)


def test_random_projection_estimate_within_chi_square_bound():
    """E||J g||^2 = ||J||_F^2; the mean over m probes is a weighted chi-square sum, so by Laurent &
    Massart (2000) it lies within 2 sqrt(sum s^4 / m) sqrt(t) + 2 max s^2 t / m of ||J||_F^2
    except with probability 2 exp(-t); t = 20."""
    _check_estimate(seed=0, m=64)


@budget(25 / 25)
@given(seed=st.integers(0, 10_000), m=st.sampled_from([1, 8, 64]))
def test_random_projection_estimate_property(seed, m):
    _check_estimate(seed, m)


def _check_estimate(seed, m, t=20.0):
    torch.manual_seed(seed)
    model, p = _f64(_mlp())
    x = torch.randn(8, 40, dtype=torch.float64)
    maps = model.layer_maps()
    xs, _ = maps.forward(p, x)
    for i in range(1, maps.depth):

        def fn(h, i=i):
            return tuple(maps.suffix(p, i, h))

        est = jacobian_frobenius_sq(fn, xs[i], m, torch.Generator().manual_seed(seed))
        exact = jacobian_frobenius_sq(fn, xs[i], None)
        for k, j in enumerate(range(i + 1, maps.depth + 1)):
            mj = _explicit_map(model, i, j)
            for n in range(len(x)):
                J = jacobian(mj, xs[i][n]).reshape(-1, xs[i][n].numel())
                s2 = torch.linalg.svdvals(J) ** 2
                assert float(exact[k][n]) == pytest.approx(float(s2.sum()), rel=1e-10, abs=1e-14)
                tol = 2 * math.sqrt(float((s2**2).sum()) / m * t) + 2 * float(s2.max()) * t / m
                assert abs(float(est[k][n]) - float(s2.sum())) <= tol + 1e-12


def test_mlp_adjacent_interlayer_cushion_is_the_layer_cushion(few):
    """J_{i,i+1} = W_{i+1}, so mu_{i,i+1} = mu_{i+1} (exact Frobenius norms)."""
    model, p = _f64(_mlp(bias=False))
    ex = noise_stability(model, p, few, n_examples=None, n_proj=None).to_json()
    for r in ex["interlayer_cushion"]:
        if r["j"] == r["i"] + 1:
            assert r["min"] == pytest.approx(ex["layer_cushion"][r["j"] - 1], rel=1e-10)


def test_attenuation_and_determinism(few):
    model = _cnn()
    p = params_of(model)
    a = noise_stability(model, p, few, n_examples=16, n_proj=8, seed=3, noise_scale=0.5)
    b = noise_stability(model, p, few, n_examples=16, n_proj=8, seed=3, noise_scale=0.5)
    assert a.to_json() == b.to_json()
    d = units_of(model).depth
    for k, att in enumerate(a.attenuation):
        assert att["layers"] == list(range(att["i"], d + 1))
        assert att["relative_change"][0] == 0.5 and all(v >= 0 for v in att["relative_change"])
        assert a.output_relative_change[k] == att["relative_change"][-1]
    assert a.kind == "noise" and a.search["n_proj"] == 8
    assert all(r["j"] >= r["i"] + 2 for r in a.interlayer_smoothness_pairs)
    assert len(a.dropout_output_change) == d - 1


@pytest.mark.e2e
def test_cli_stability_noise(tmp_path, capsys):
    from isthmus.cli import main
    from isthmus.stability import load_stability

    run = tmp_path / "run"
    argv = ["train", "--data", "digits", "--model", "cnn", "--channels", "4,M,4,M"]
    assert main(argv + ["--epochs", "1", "--out", str(run)]) == 0
    out = tmp_path / "noise"
    argv = ["stability", str(run), "--kind", "noise", "--examples", "32", "--projections", "8"]
    assert main(argv + ["--out", str(out)]) == 0
    res = load_stability(out)
    assert res.kind == "noise" and len(res.layer_cushion) == 3
    assert "noise epsilon" in capsys.readouterr().out
    assert (out / "stability.png").is_file()
