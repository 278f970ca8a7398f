"""Paths: exact endpoints, curves on the line equal the line, batched = loop, BN policy, fitting."""

from __future__ import annotations

import pytest
import torch
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

from isthmus.errors import IsthmusError
from isthmus.io import load_tensors, save_tensors
from isthmus.models import ModelConfig, build_model
from isthmus.params import (
    Params,
    bn_subset,
    combine,
    evaluate,
    mean_loss,
    params_of,
    stack,
    stack_controls,
    to,
)
from isthmus.paths import PiecewiseLinearPath, evaluate_path, line
from isthmus.paths.bezier import BezierPath, bernstein
from isthmus.paths.chain import ChainPath, piecewise_from_tensors
from isthmus.paths.fit import FitConfig, fit_curve
from isthmus.train import TrainConfig, train, train_population

MLP = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(40,))
BN_CNN = ModelConfig(kind="cnn", channels=(4, "M", 4, "M"), batchnorm=True, input_shape=(40,))


def _nets(cfg: ModelConfig, n: int, seed: int = 0) -> list[Params]:
    torch.manual_seed(seed)
    return [params_of(build_model(cfg)) for _ in range(n)]


def _all_paths(a: Params, b: Params, bends: list[Params]) -> list:
    return [
        line(a, b),
        ChainPath.on_line(a, b, 1),
        ChainPath(a, b, bends[:2]),
        BezierPath.on_line(a, b, 3),
        BezierPath(a, b, bends[:1]),
        BezierPath(a, b, bends),
        PiecewiseLinearPath([a, *bends, b], [0.0, 0.1, 0.5, 0.55, 1.0], method="neb"),
    ]


@pytest.mark.parametrize("cfg", [MLP, BN_CNN])
def test_endpoints_exact_for_every_path_type(cfg):
    a, b, *bends = _nets(cfg, 5)
    for path in _all_paths(a, b, bends):
        pts = path.points(torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64))
        for k in a:
            assert torch.equal(pts[k][0], a[k]), (path.method, k)
            assert torch.equal(pts[k][2], b[k]), (path.method, k)
            assert pts[k].dtype == a[k].dtype
        assert all(torch.equal(path.point(1.0)[k], b[k]) for k in b)


def test_chain_nodes_exact_at_knots():
    a, b, *bends = _nets(MLP, 4)
    path = ChainPath(a, b, bends[:2])
    pts = path.points(torch.tensor(path.knots(), dtype=torch.float64))
    for i, node in enumerate(path.nodes):
        assert all(torch.equal(pts[k][i], node[k]) for k in node)


@budget(20 / 25)
@given(
    bends=st.integers(1, 5),
    ts=st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=8),
)
def test_curves_with_bends_on_the_line_equal_the_line(bends, ts):
    a, b = (to(p, dtype=torch.float64) for p in _nets(MLP, 2))
    t = torch.tensor(ts, dtype=torch.float64)
    ref = line(a, b).points(t)
    for path in (BezierPath.on_line(a, b, bends), ChainPath.on_line(a, b, bends)):
        pts = path.points(t)
        for k in ref:
            torch.testing.assert_close(pts[k], ref[k], rtol=1e-12, atol=1e-12)


@budget(30 / 25)
@given(order=st.integers(1, 8), ts=st.lists(st.floats(0, 1, allow_nan=False), max_size=10))
def test_bernstein_is_a_partition_of_unity_with_exact_ends(order, ts):
    w = bernstein(torch.tensor([0.0, *ts, 1.0], dtype=torch.float64), order)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(len(w), dtype=torch.float64))
    assert w[0, 0] == 1 and (w[0, 1:] == 0).all()
    assert w[-1, -1] == 1 and (w[-1, :-1] == 0).all()


def test_combine_copies_one_hot_rows_exactly():
    a, b, c = _nets(MLP, 3)
    w = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    out = combine(w, stack_controls([a, b, c]), a)
    assert all(torch.equal(out[k][0], b[k]) and torch.equal(out[k][2], c[k]) for k in a)
    for k in a:
        torch.testing.assert_close(out[k][1], 0.2 * a[k] + 0.3 * b[k] + 0.5 * c[k])


def test_batched_path_evaluation_equals_loop(small_mnist1d):
    d = small_mnist1d
    model = build_model(MLP)
    a, b, bend = _nets(MLP, 3)
    path = BezierPath(a, b, [bend])
    res = evaluate_path(model, path, d, points=9, chunk=4)
    model.eval()
    for t, tr_loss, tr_acc, te_loss in zip(
        res.t, res.train_loss, res.train_acc, res.test_loss, strict=True
    ):
        p = path.point(t)
        with torch.no_grad():
            out = functional_call(model, p, (d.x_train,))
            ref = torch.nn.functional.cross_entropy(out, d.y_train).item()
            acc = (out.argmax(1) == d.y_train).double().mean().item()
            ref_te = torch.nn.functional.cross_entropy(
                functional_call(model, p, (d.x_test,)), d.y_test
            ).item()
        assert tr_loss == pytest.approx(ref, rel=1e-5)
        assert tr_acc == acc
        assert te_loss == pytest.approx(ref_te, rel=1e-5)


def test_bn_path_endpoints_reproduce_the_endpoints_own_metrics(small_mnist1d):
    d = small_mnist1d
    model = build_model(BN_CNN)
    a, b, bend = _nets(BN_CNN, 3)
    # make the running statistics of the endpoints wrong on purpose: the policy must not use them
    for p in (a, b):
        for k in p:
            if k.endswith("running_mean"):
                p[k] = p[k] + 5.0
    bn_x = bn_subset(d.x_train)
    own = [
        (
            evaluate(model, [p], d.x_train, d.y_train, bn_x=bn_x),
            evaluate(model, [p], d.x_test, d.y_test, bn_x=bn_x),
        )
        for p in (a, b)
    ]
    for path in (line(a, b), BezierPath(a, b, [bend]), ChainPath(a, b, [bend])):
        res = evaluate_path(model, path, d, points=5, bn_x=bn_x)
        for i, (tr, te) in zip((0, -1), own, strict=True):
            assert res.train_loss[i] == float(tr.loss[0])
            assert res.train_acc[i] == float(tr.acc[0])
            assert res.test_loss[i] == float(te.loss[0])
            assert res.test_acc[i] == float(te.acc[0])


def test_path_files_round_trip(tmp_path):
    a, b, *bends = _nets(BN_CNN, 4)
    ts = torch.linspace(0, 1, 7, dtype=torch.float64)
    cases = [
        (BezierPath(a, b, bends), BezierPath.from_tensors),
        (BezierPath.on_line(a, b, 2), BezierPath.from_tensors),  # bends share A's int buffers
        (BezierPath(a, b, [a]), BezierPath.from_tensors),  # a bend that *is* A
        (ChainPath(a, b, bends), lambda t: piecewise_from_tensors(t, "chain")),
        (ChainPath.on_line(a, b, 1), lambda t: piecewise_from_tensors(t, "chain")),
    ]
    for i, (path, load) in enumerate(cases):
        save_tensors(tmp_path / f"{i}.safetensors", path.tensors())  # refuses shared memory
        back = load(load_tensors(tmp_path / f"{i}.safetensors"))
        assert type(back) is type(path)
        p, q = path.points(ts), back.points(ts)
        assert all(torch.equal(p[k], q[k]) for k in p)


# ----------------------------------------------------------------------------- fitting


@pytest.fixture(scope="module")
def two_mlps(small_mnist1d):
    cfg = TrainConfig(epochs=8, batch_size=64)
    runs = [train(MLP, small_mnist1d, cfg, seed=s, progress=False) for s in (0, 1)]
    return build_model(MLP), runs[0].params, runs[1].params


@pytest.mark.parametrize("vmapped", [True, False])
def test_fitting_loss_is_the_mean_of_per_point_losses(vmapped, two_mlps, small_mnist1d):
    """Both the vmapped call (accelerators) and the CPU loop equal plain per-point losses."""
    model, a, b = two_mlps
    d = small_mnist1d
    bend = {k: v.clone().requires_grad_(True) for k, v in _nets(MLP, 1)[0].items()}
    path = BezierPath(a, b, [bend])
    ts = torch.tensor([0.1, 0.4, 0.8], dtype=torch.float64)
    xb, yb = d.x_train[:64], d.y_train[:64]
    batched = mean_loss(model, path.points(ts), xb, yb, "ce", vmapped=vmapped)
    (gb,) = torch.autograd.grad(batched.sum(), bend["layers.0.weight"])
    loop = torch.stack(
        [
            torch.nn.functional.cross_entropy(
                functional_call(model, path.point(float(t)), (xb,)), yb
            )
            for t in ts
        ]
    )
    (gl,) = torch.autograd.grad(loop.sum(), bend["layers.0.weight"])
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gb, gl, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", [BezierPath, ChainPath])
def test_fitted_curve_keeps_endpoints_and_lowers_the_loss_along_it(kind, two_mlps, small_mnist1d):
    model, a, b = two_mlps
    d = small_mnist1d
    fit = fit_curve(
        model, kind.on_line(a, b, 1), d, FitConfig(epochs=4, batch_size=64), progress=False
    )
    assert type(fit.path) is kind
    ends = fit.path.points(torch.tensor([0.0, 1.0]))
    assert all(torch.equal(ends[k][0], a[k]) and torch.equal(ends[k][1], b[k]) for k in a)
    before = evaluate_path(model, line(a, b), d, points=11)
    after = evaluate_path(model, fit.path, d, points=11)
    assert sum(after.train_loss) < sum(before.train_loss)
    assert after.barrier["train_loss"] < before.barrier["train_loss"]


def test_fit_is_deterministic_and_resume_continues_exactly(two_mlps, small_mnist1d, tmp_path):
    model, a, b = two_mlps
    cfg = FitConfig(epochs=2, batch_size=128, optimizer="adam", lr=1e-3)
    init = BezierPath.on_line(a, b, 2)
    kw = dict(seed=3, progress=False)
    full = fit_curve(model, init, small_mnist1d, cfg, **kw)
    again = fit_curve(model, init, small_mnist1d, cfg, **kw)
    fit_curve(model, init, small_mnist1d, cfg, checkpoint=tmp_path, max_epochs=1, **kw)
    resumed = fit_curve(model, init, small_mnist1d, cfg, checkpoint=tmp_path, resume=True, **kw)
    for other in (again, resumed):
        for bf, bo in zip(full.path.bends, other.path.bends, strict=True):
            assert all(torch.equal(bf[k], bo[k]) for k in bf)
    assert resumed.history == full.history
    # a checkpoint of another pair of nets is refused (its bends belong to those nets)
    swapped = BezierPath.on_line(b, a, 2)
    with pytest.raises(IsthmusError, match="another curve"):
        fit_curve(model, swapped, small_mnist1d, cfg, checkpoint=tmp_path, resume=True, **kw)
    with pytest.raises(IsthmusError, match="no curve checkpoint"):
        fit_curve(model, init, small_mnist1d, cfg, checkpoint=tmp_path / "x", resume=True, **kw)
    other_seed = fit_curve(model, init, small_mnist1d, cfg, seed=4, progress=False)
    assert not torch.equal(
        other_seed.path.bends[0]["layers.0.weight"], full.path.bends[0]["layers.0.weight"]
    )


def test_fit_bn_net_uses_batch_statistics_per_point(small_mnist1d):
    d = small_mnist1d.subset(128, 64, seed=0)
    model = build_model(BN_CNN)
    a, b = _nets(BN_CNN, 2)
    fit = fit_curve(
        model, BezierPath.on_line(a, b, 1), d, FitConfig(epochs=1, batch_size=32), progress=False
    )
    bend = fit.path.bends[0]
    start = BezierPath.on_line(a, b, 1).bends[0]
    assert not torch.equal(bend["convs.0.weight"], start["convs.0.weight"])
    assert torch.equal(bend["bns.0.running_mean"], start["bns.0.running_mean"])  # scratch, unfitted
    res = evaluate_path(model, fit.path, d, points=5, bn_x=d.x_train)
    assert all(torch.isfinite(torch.tensor(res.train_loss)))
    assert model.training  # mode restored


def test_bezier_stacked_points_are_one_stack(two_mlps):
    _, a, b = two_mlps
    path = BezierPath(a, b, [a])
    pts = path.points(torch.linspace(0, 1, 5))
    ref = stack([path.point(float(t)) for t in torch.linspace(0, 1, 5)])
    for k in pts:
        torch.testing.assert_close(pts[k], ref[k], rtol=0, atol=1e-7)


@pytest.mark.e2e
def test_a_fitted_one_bend_bezier_removes_most_of_the_straight_line_barrier(mnist1d):
    """The acceptance property at a smaller scale (width 64, 1,000 examples; the full-size run is in
    the README): independently trained MLPs have a straight-line barrier > 0.1 nats, and the
    fitted one-bend Bezier curve's barrier is at most a quarter of it."""
    d = mnist1d.subset(1000, 500, seed=0)
    cfg = ModelConfig(kind="mlp", depth=3, width=64, input_shape=(40,))
    runs = train_population(cfg, d, TrainConfig(epochs=30, batch_size=64), [0, 1], progress=False)
    a, b = runs[0].params, runs[1].params
    model = build_model(cfg)
    straight = evaluate_path(model, line(a, b), d, points=21).barrier["train_loss"]
    fit = fit_curve(
        model, BezierPath.on_line(a, b, 1), d, FitConfig(epochs=20, batch_size=64), progress=False
    )
    curved = evaluate_path(model, fit.path, d, points=21).barrier["train_loss"]
    assert straight > 0.1
    assert curved <= straight / 4, (straight, curved)


def test_vmap_or_loop_is_fixed_by_shapes():
    """Curve fitting picks vmap or the loop from shapes alone (same seed, same curve)."""
    from isthmus.params import vmap_pays

    small = stack(_nets(MLP, 4))
    assert vmap_pays(small, torch.zeros(8, 40))
    assert not vmap_pays({k: v[:1] for k, v in small.items()}, torch.zeros(8, 40))  # one point
    assert not vmap_pays(small, torch.zeros(8, 1, 4, 10))  # images: channels_last loop
    wide = ModelConfig(kind="mlp", depth=3, width=1024, input_shape=(40,))
    assert not vmap_pays(stack(_nets(wide, 2)), torch.zeros(8, 40))
