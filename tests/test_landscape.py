"""The seams the large-scale tools build on: the flat-vector Landscape protocol, the differentiable
loss on the ground floor, and path fitting generalised to k-dimensional families."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MB_NEB, budget
from hypothesis import given
from hypothesis import strategies as st

from isthmus.errors import IsthmusError
from isthmus.landscape import (
    Landscape,
    ModuleLandscape,
    MullerBrown,
    Quadratic,
    as_point,
    is_landscape,
)
from isthmus.models import ModelConfig, build_model
from isthmus.params import (
    combine,
    evaluate,
    lerp,
    mean_loss,
    params_of,
    stack,
    stack_controls,
)
from isthmus.paths import BezierPath, evaluate_path, line
from isthmus.paths.chain import ChainPath
from isthmus.paths.fit import Family, FitConfig, fit_curve, fit_family
from isthmus.paths.neb import NEBConfig, connect_neb
from isthmus.seeding import generator
from isthmus.surface import Plane, evaluate_surface
from isthmus.train import lr_factor


def _quadratic(dim: int, seed: int) -> Quadratic:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    m = torch.randn(dim, generator=g, dtype=torch.float64)
    return Quadratic(q @ q.T + 0.1 * torch.eye(dim, dtype=torch.float64), m, offset=0.5)


def _closed_form(q: Quadratic, x: torch.Tensor) -> torch.Tensor:
    d = x - q.minimum
    return q.offset + 0.5 * torch.einsum("pi,ij,pj->p", d, q.hessian, d)


def test_quadratic_is_a_landscape_and_a_module_is_not():
    q = _quadratic(3, 0)
    assert isinstance(q, Landscape) and is_landscape(q) and is_landscape(MullerBrown())
    assert not is_landscape(build_model(ModelConfig(kind="mlp", depth=2, width=4)))
    with pytest.raises(IsthmusError, match="symmetric"):
        Quadratic(torch.ones(2, 3))


@budget(0.4)
@given(dim=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_a_line_on_a_quadratic_has_its_closed_form_values(dim, seed):
    q = _quadratic(dim, seed)
    g = torch.Generator().manual_seed(seed + 1)
    a, b = (torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(2))
    res = evaluate_path(q, line(as_point(a), as_point(b)), points=11)
    t = torch.tensor(res.t, dtype=torch.float64)
    want = _closed_form(q, a[None] + t[:, None] * (b - a)[None])
    assert torch.allclose(torch.tensor(res.train_loss, dtype=torch.float64), want, rtol=1e-12)
    assert res.test_loss == res.train_loss and all(math.isnan(v) for v in res.train_acc)
    # along a line a quadratic is a parabola: its maximum over [0, 1] is at an end (H is PD)
    assert res.barrier["train_loss"] <= 1e-12


def test_a_plane_on_a_quadratic_has_its_closed_form_values():
    q = _quadratic(4, 3)
    g = torch.Generator().manual_seed(7)
    pa, pb, pc = (as_point(torch.randn(4, generator=g, dtype=torch.float64)) for _ in range(3))
    plane = Plane(pa, pb, pc)
    res = evaluate_surface(q, plane, grid=5, progress=False)
    xs, ys = torch.tensor(res.x, dtype=torch.float64), torch.tensor(res.y, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = plane.origin + xx.reshape(-1, 1) * plane.u + yy.reshape(-1, 1) * plane.v
    want = _closed_form(q, pts).reshape(5, 5)
    got = torch.tensor(res.train_loss, dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    # the three anchors lie on the plane exactly: their coordinates reproduce them
    for name, p in zip(("A", "B", "C"), (pa, pb, pc), strict=True):
        xy = torch.tensor([res.points[name]], dtype=torch.float64)
        assert torch.equal(plane.points(xy)["x"][0], p["x"])


def test_autoneb_through_the_protocol_finds_the_muller_brown_saddle(mb):
    (xa, _), (xc, _), (xs, es) = mb["A"], mb["C"], mb["S1"]
    cfg = NEBConfig(pivots=7, cycles=1, steps=400, **MB_NEB)
    path, res = connect_neb(MullerBrown(), as_point(xa), as_point(xc), cfg=cfg, progress=False)
    top = int(res.losses.argmax())
    assert abs(float(res.losses[top]) - es) <= 0.02 * abs(es)
    assert float((res.pivots[top] - xs).norm()) < 0.02
    # the result is an ordinary path over Landscape points, with exact ends
    assert torch.equal(path.start["x"], xa) and torch.equal(path.end["x"], xc)
    prof = evaluate_path(MullerBrown(), path, points=41)
    assert abs(max(prof.train_loss) - es) <= 0.05 * abs(es)


def _nets(seed: int = 0, width: int = 8):
    cfg = ModelConfig(kind="mlp", depth=3, width=width, input_shape=(40,))
    torch.manual_seed(seed)
    model = build_model(cfg)
    a = params_of(model)
    torch.manual_seed(seed + 1)
    b = params_of(build_model(cfg))
    return model, a, b


def test_mean_loss_is_differentiable_and_equals_evaluate(small_mnist1d):
    d = small_mnist1d
    model, a, b = _nets()
    pts = stack([a, lerp(a, b, 0.3), b])
    x, y = d.x_train[:200], d.y_train[:200]
    for vmapped in (False, True):
        got = mean_loss(model, pts, x, y, "ce", vmapped=vmapped)
        want = evaluate(model, pts, x, y, loss="ce").loss
        assert torch.allclose(got.double(), want, rtol=1e-5)
    leaf = {k: v.clone().requires_grad_(True) for k, v in a.items()}
    (g,) = torch.autograd.grad(
        mean_loss(model, {k: v[None] for k, v in leaf.items()}, x, y, "ce")[0],
        leaf["layers.0.weight"],
    )
    assert g.shape == a["layers.0.weight"].shape and float(g.abs().sum()) > 0


def test_a_module_landscape_is_the_nets_loss_over_flat_vectors(small_mnist1d):
    d = small_mnist1d
    model, a, b = _nets()
    land = ModuleLandscape(model, a, d.x_train, d.y_train)
    xa, xb = land.point(a), land.point(b)
    assert land.dim == xa.numel() and torch.equal(
        land.params(xa)["layers.0.weight"], a["layers.0.weight"]
    )
    got = land.loss(torch.stack([xa, xb]))
    want = evaluate(model, [a, b], d.x_train, d.y_train).loss
    assert torch.allclose(got.double(), want, rtol=1e-5)
    # the same tools, through the protocol: a line of the net as a Landscape
    res = evaluate_path(land, line(as_point(xa), as_point(xb)), points=5)
    direct = evaluate_path(model, line(a, b), d, points=5)
    assert torch.allclose(torch.tensor(res.train_loss), torch.tensor(direct.train_loss), rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 7])
def test_combine_gives_each_point_the_same_numbers_in_any_chunking(rows):
    _, a, b = _nets(width=16)
    c = lerp(a, b, 0.37)
    g = torch.Generator().manual_seed(rows)
    w = torch.rand(7, 3, generator=g, dtype=torch.float64)
    w = w / w.sum(1, keepdim=True)
    st_ = stack_controls([a, b, c])
    whole = combine(w, st_, a)
    for i in range(0, 7, rows):
        part = combine(w[i : i + rows], st_, a)
        for k in whole:
            assert torch.equal(part[k], whole[k][i : i + rows]), k


def _reference_bezier_fit(model, path, data, cfg, seed):
    """The single-t Bezier fit as it was written before families (Garipov et al.'s loop with
    `samples` values of t per minibatch): bends as leaves, endpoints concatenated around them."""
    keys = [k for k in path.start if k in dict(model.named_parameters())]
    bends = {k: torch.stack([b[k] for b in path.bends]).clone().requires_grad_(True) for k in keys}
    ends = {k: (path.start[k][None], path.end[k][None]) for k in keys}
    opt = torch.optim.SGD(list(bends.values()), lr=cfg.lr, momentum=cfg.momentum)
    N, B = len(data.x_train), min(cfg.batch_size, len(data.x_train))
    per_epoch = math.ceil(N / B)
    step, total = 0, per_epoch * cfg.epochs
    for epoch in range(cfg.epochs):
        g = generator(seed, epoch, 5)
        order = torch.randperm(N, generator=g)
        ts_all = torch.rand(per_epoch, cfg.samples, generator=g, dtype=torch.float64)
        for b in range(per_epoch):
            idx = order[b * B : (b + 1) * B]
            stacked = {k: torch.cat([ends[k][0], bends[k], ends[k][1]]) for k in keys}
            w = path.weights(ts_all[b]).float()
            # the definition, term by term over all K controls, differentiated by autograd
            pts = {k: sum(w[:, j, None] * stacked[k][j].reshape(-1) for j in range(w.shape[1]))
                   .reshape(len(w), *stacked[k].shape[1:]) for k in keys}  # fmt: skip
            loss = mean_loss(model, pts, data.x_train[idx], data.y_train[idx], data.loss).mean()
            opt.zero_grad()
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg.schedule, step, total)
            opt.step()
            step += 1
    return {k: v.detach() for k, v in bends.items()}


@pytest.mark.parametrize("cls", [BezierPath, ChainPath])
def test_the_family_fit_with_k_1_is_the_curve_fit_bit_for_bit(small_mnist1d, cls):
    model, a, b = _nets()
    d = small_mnist1d.subset(256, 64, seed=0)
    cfg = FitConfig(epochs=2, batch_size=64, samples=3)
    path = cls.on_line(a, b, 2)
    fitted = fit_family(model, path, d, cfg, seed=5, progress=False).path
    want = _reference_bezier_fit(model, path, d, cfg, seed=5)
    for k, v in want.items():
        got = torch.stack([bend[k] for bend in fitted.bends])
        assert torch.equal(got, v), k
    assert torch.equal(fitted.start["layers.0.weight"], a["layers.0.weight"])
    via_curve = fit_curve(model, path, d, cfg, seed=5, progress=False).path
    assert all(torch.equal(via_curve.bends[0][k], fitted.bends[0][k]) for k in a)


class _Triangle:
    """A 2-simplex over three control points with Dirichlet(1, 1, 1) members: two fixed vertices
    (given solutions) and one trainable connector. Written here, outside the library: a new
    family is a small class, not a copy of the fitting loop."""

    method = "triangle"

    def __init__(self, controls):
        self._controls = list(controls)

    def controls(self):
        return list(self._controls)

    def trainable(self):
        return [2]

    def sample_weights(self, n, generator):
        e = -torch.log(torch.rand(n, 3, generator=generator, dtype=torch.float64))
        return e / e.sum(1, keepdim=True)  # uniform on the simplex

    def with_controls(self, controls):
        return _Triangle(controls)


def test_a_simplex_family_fits_on_a_landscape_and_its_fixed_vertices_never_move():
    q = Quadratic(torch.diag(torch.tensor([1.0, 10.0, 10.0], dtype=torch.float64)))
    # two solutions on the low-curvature axis; the connector starts far off it
    va, vb = as_point([-1.0, 0.0, 0.0]), as_point([1.0, 0.0, 0.0])
    vc = as_point([0.0, 2.0, -2.0])
    fam = _Triangle([va, vb, vc])
    assert isinstance(fam, Family)
    cfg = FitConfig(epochs=200, lr=0.01, samples=8, schedule="constant")
    res = fit_family(q, fam, None, cfg, seed=0, progress=False)
    out = res.path.controls()
    assert torch.equal(out[0]["x"], va["x"]) and torch.equal(out[1]["x"], vb["x"])
    assert float(out[2]["x"][1:].abs().max()) < 0.05  # pulled onto the valley floor
    assert res.history[-1]["loss"] < 0.1 * res.history[0]["loss"]
    again = fit_family(q, fam, None, cfg, seed=0, progress=False).path.controls()
    assert torch.equal(again[2]["x"], out[2]["x"])  # same seed, same numbers


def test_fitting_a_module_without_data_is_refused():
    model, a, b = _nets()
    with pytest.raises(IsthmusError, match="needs data"):
        fit_curve(model, BezierPath.on_line(a, b), None, FitConfig(epochs=1), progress=False)
