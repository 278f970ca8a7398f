"""The simplicial-complex family: uniform draws inside simplices, fixed solutions that never move,
the penalties' mathematics, and the smallest complex being exactly the one-bend chain."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st

from isthmus.data import Dataset
from isthmus.errors import IsthmusError
from isthmus.landscape import Quadratic, as_point
from isthmus.models import ModelConfig, build_model
from isthmus.params import lerp, params_of
from isthmus.paths.chain import ChainPath
from isthmus.paths.fit import Family, FitConfig, fit_curve, fit_family
from isthmus.subspace import (
    SimplicialComplex,
    log_volume,
    mean_squared_cosine,
    star,
    vertices_from_tensors,
)


def _points(V: int, D: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [as_point(torch.randn(D, generator=g, dtype=torch.float64)) for _ in range(V)]


@budget(1)
@given(N=st.integers(2, 6), M=st.integers(1, 4), n=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_draws_lie_inside_one_simplex(N, M, n, seed):
    cx = star(_points(N), _points(M, seed=1))
    w = cx.sample_weights(n, torch.Generator().manual_seed(seed))
    assert w.shape == (n, N + M) and w.dtype == torch.float64
    assert bool((w >= 0).all())
    assert torch.allclose(w.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-12)
    support = [set(torch.nonzero(row).flatten().tolist()) for row in w]
    assert all(s <= set(cx.simplices[0]) | set(range(N)) for s in support)
    for s in support:  # inside exactly one simplex: one solution at most, plus connectors
        assert len(s & set(range(N))) <= 1


def test_draws_are_uniform_over_simplices_and_dirichlet_inside():
    cx = star(_points(3), _points(2, seed=1))  # three 2-simplices
    w = cx.sample_weights(60_000, torch.Generator().manual_seed(0))
    chosen = w[:, :3].argmax(1)
    freq = torch.bincount(chosen, minlength=3).double() / len(w)
    assert torch.allclose(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01)
    inside = w[chosen == 0][:, [0, 3, 4]]  # Dirichlet(1, 1, 1): mean 1/3, var 1/18 each
    assert torch.allclose(inside.mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01)
    assert torch.allclose(inside.var(0), torch.full((3,), 1 / 18, dtype=torch.float64), atol=0.005)
    # a wrong sampler (normalised uniforms) has a smaller variance for the middle vertex
    assert float((inside[:, 0] > 0.9).double().mean()) == pytest.approx(0.01, abs=0.004)


def test_two_solutions_and_one_connector_are_the_one_bend_chain():
    cfg = ModelConfig(kind="mlp", depth=3, width=8, input_shape=(40,))
    torch.manual_seed(0)
    model = build_model(cfg)
    a = params_of(model)
    torch.manual_seed(1)
    b = params_of(build_model(cfg))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 40, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    d = Dataset("toy", x, y, x[:8], y[:8], 10, "classification", (40,))
    bend = lerp(a, b, 0.5)
    fc = FitConfig(epochs=3, batch_size=32, samples=3)
    chain = fit_curve(model, ChainPath(a, b, [bend]), d, fc, seed=7, progress=False)
    cx = fit_family(model, star([a, b], [bend]), d, fc, seed=7, progress=False)
    assert [h["loss"] for h in chain.history] == [h["loss"] for h in cx.history]
    got = cx.path.controls()
    for k in a:
        assert torch.equal(chain.path.bends[0][k], got[2][k]), k
        assert torch.equal(got[0][k], a[k]) and torch.equal(got[1][k], b[k])


def test_fixed_solutions_stay_bit_identical_and_connectors_move():
    q = Quadratic(torch.diag(torch.tensor([1.0, 10.0, 10.0, 10.0], dtype=torch.float64)))
    sols = [as_point([s, 0.0, 0.0, 0.0]) for s in (-2.0, -1.0, 1.0, 2.0)]
    cons = [as_point([0.0, 1.0, -1.0, 0.5]), as_point([0.5, -1.0, 1.0, 1.0])]
    before = [v["x"].clone() for v in sols]
    cx = star(sols, cons, volume=1e-3)
    assert isinstance(cx, Family)
    res = fit_family(q, cx, None, FitConfig(epochs=150, lr=0.01, samples=8), progress=False)
    out = res.path.controls()
    assert all(torch.equal(out[i]["x"], before[i]) for i in range(4))
    assert all(torch.equal(sols[i]["x"], before[i]) for i in range(4))  # inputs untouched
    assert res.history[-1]["loss"] < 0.2 * res.history[0]["loss"]
    assert float(out[4]["x"][1:].abs().max()) < 0.3


def test_log_volume_of_known_simplices():
    # a right triangle with legs 3 and 4 (area 6) and a unit cube corner tetrahedron (1/6),
    # rotated into 7 dimensions
    Q, _ = torch.linalg.qr(
        torch.randn(7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    tri = torch.tensor([[0, 0, 0], [3, 0, 0], [0, 4, 0]], dtype=torch.float64)
    tet = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    pad = lambda X: torch.cat([X, torch.zeros(len(X), 4, dtype=torch.float64)], 1) @ Q.T  # noqa: E731
    assert float(log_volume(pad(tri) + 5)) == pytest.approx(math.log(6), abs=1e-10)
    assert float(log_volume(pad(tet) - 2)) == pytest.approx(math.log(1 / 6), abs=1e-10)
    seg = torch.tensor([[1.0, 1.0], [4.0, 5.0]], dtype=torch.float64)
    assert float(log_volume(seg)) == pytest.approx(math.log(5), abs=1e-12)


def test_mean_squared_cosine():
    X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    # pairs: cos^2 = 0, 1/2, 1/2
    assert float(mean_squared_cosine(X)) == pytest.approx(1 / 3, abs=1e-12)


def test_penalties_push_vertices_apart():
    cx = SimplicialComplex(_points(3, D=5), [(0, 1, 2)], fixed=[0], volume=1.0, cosine=1.0)
    st_ = {"x": torch.stack([v["x"] for v in cx.vertices]).requires_grad_(True)}
    pen = cx.penalty(st_)
    (g,) = torch.autograd.grad(pen, st_["x"])
    step = {"x": st_["x"].detach() - 1e-3 * g}
    assert float(cx.penalty(step)) < float(pen.detach())
    assert SimplicialComplex(_points(2), [(0, 1)]).penalty(st_) is None


def test_the_penalty_from_gram_matrices_equals_the_direct_formulas():
    g = torch.Generator().manual_seed(4)
    far = [as_point(1e3 + torch.randn(6, generator=g, dtype=torch.float64)) for _ in range(5)]
    cx = SimplicialComplex(far, [(0, 1, 2), (2, 3, 4)], volume=0.7, cosine=0.3)
    X = torch.stack([v["x"] for v in far])
    want = -0.7 * (log_volume(X[[0, 1, 2]]) + log_volume(X[[2, 3, 4]])) / 2
    want = want + 0.3 * mean_squared_cosine(X)
    assert float(cx.penalty({"x": X})) == pytest.approx(float(want), rel=1e-9)


@budget(1)
@given(
    V=st.integers(3, 7),
    m=st.integers(1, 3),
    S=st.integers(1, 4),
    volume=st.sampled_from([0.0, 1e-6, 0.7]),
    cosine=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**31),
)
def test_the_closed_form_penalty_gradient_equals_autograd(V, m, S, volume, cosine, seed):
    g = torch.Generator().manual_seed(seed)
    m = min(m, V - 1)
    simplices = [tuple(torch.randperm(V, generator=g)[: m + 1].tolist()) for _ in range(S)]
    X = torch.randn(V, m + 4, generator=g, dtype=torch.float64)  # D > m: no flat simplex
    cx = SimplicialComplex([as_point(x) for x in X], simplices, volume=volume, cosine=cosine)
    grams = {r: (X - X[0] if r else X) @ (X - X[0] if r else X).T for r in (True, False)}
    leaves = {r: G.clone().requires_grad_(True) for r, G in grams.items()}
    closed = cx.penalty_grad_of_gram(lambda r: grams[r])
    pen = cx.penalty_of_gram(lambda r: leaves[r])
    if pen is None:
        assert closed == {}
        return
    used = [r for r in (True, False) if (volume if r else cosine)]
    want = torch.autograd.grad(pen, [leaves[r] for r in used])
    assert sorted(closed) == sorted(used)
    for r, w in zip(used, want, strict=True):
        assert torch.allclose(closed[r], w, rtol=1e-9, atol=1e-12 * float(w.abs().max())), r


def test_tensors_round_trip_and_bad_complexes_are_refused():
    cx = star(_points(3), _points(1, seed=2))
    back = vertices_from_tensors(cx.tensors())
    assert all(torch.equal(u["x"], v["x"]) for u, v in zip(back, cx.vertices, strict=True))
    assert cx.edges() == [(0, 3), (1, 3), (2, 3)]
    with pytest.raises(IsthmusError, match="same number"):
        SimplicialComplex(_points(4), [(0, 1), (1, 2, 3)])
    with pytest.raises(IsthmusError, match="distinct"):
        SimplicialComplex(_points(3), [(0, 0)])
    with pytest.raises(IsthmusError, match=">= 1 connector"):
        star(_points(3), [])
    with pytest.raises(IsthmusError, match="not a subspace file"):
        vertices_from_tensors({"node0.x": torch.zeros(1)})
