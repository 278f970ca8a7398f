"""Loss planes and filter-normalised slices: exact anchors, orthonormal coordinates, batched = loop."""

from __future__ import annotations

import pytest
import torch
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig, build_model
from isthmus.params import Params, params_of, to
from isthmus.paths.bezier import BezierPath
from isthmus.surface import (
    Plane,
    RandomSlice,
    evaluate_surface,
    filter_normalized_direction,
    project_path,
)

MLP = ModelConfig(kind="mlp", depth=3, width=12, input_shape=(40,))
BN_CNN = ModelConfig(kind="cnn", channels=(4, "M", 4, "M"), batchnorm=True, input_shape=(40,))


def _nets(cfg: ModelConfig, n: int) -> list[Params]:
    return [params_of(build_model(cfg)) for _ in range(n)]


@pytest.mark.parametrize("cfg", [MLP, BN_CNN])
def test_plane_coordinates_reproduce_the_three_points_exactly(cfg):
    a, b, c = _nets(cfg, 3)
    for k in a:  # distinct BN statistics too
        if k.endswith("running_var"):
            b[k], c[k] = b[k] * 2, c[k] * 3
    pl = Plane(a, b, c)
    coords = pl.anchor_coords()
    xy = torch.tensor([coords["A"], coords["B"], coords["C"]], dtype=torch.float64)
    pts = pl.points(xy)
    for i, p in enumerate((a, b, c)):
        assert all(torch.equal(pts[k][i], p[k]) for k in p)
        torch.testing.assert_close(
            torch.tensor(pl.coords(p), dtype=torch.float64), xy[i], rtol=1e-6, atol=1e-6
        )
    torch.testing.assert_close(pl.u @ pl.u, torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(pl.v @ pl.v, torch.tensor(1.0, dtype=torch.float64))
    assert abs(float(pl.u @ pl.v)) < 1e-12


@budget(25 / 25)
@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3)), min_size=1, max_size=6))
def test_plane_coordinates_are_orthonormal(xys):
    a, b, c = (to(p, dtype=torch.float64) for p in _nets(MLP, 3))
    pl = Plane(a, b, c)
    xy = torch.tensor(xys, dtype=torch.float64)
    pts = pl.points(xy)
    for i in range(len(xy)):
        q = {k: v[i] for k, v in pts.items()}
        torch.testing.assert_close(torch.tensor(pl.coords(q), dtype=torch.float64), xy[i])
    # distances in the plane equal distances in parameter space
    if len(xy) > 1:
        d = torch.cat([(pts[k][0] - pts[k][1]).reshape(-1) for k in pl.keys]).norm()
        torch.testing.assert_close(d, (xy[0] - xy[1]).norm())


def test_plane_rejects_collinear_points():
    a, b = (to(p, dtype=torch.float64) for p in _nets(MLP, 2))
    mid = {k: (a[k] + b[k]) / 2 for k in a}
    with pytest.raises(IsthmusError, match="one line"):
        Plane(a, b, mid)


def test_filter_normalized_direction():
    (p,) = _nets(BN_CNN, 1)
    d = filter_normalized_direction(p, seed=1)
    for k, w in p.items():
        if not torch.is_floating_point(w):
            assert torch.equal(d[k], w)
        elif w.dim() <= 1:  # biases, BN parameters and statistics
            assert (d[k] == 0).all()
        else:
            rows_w = w.reshape(w.shape[0], -1).norm(dim=1)
            rows_d = d[k].reshape(w.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(rows_d, rows_w, rtol=1e-5, atol=1e-7)
    again, other = filter_normalized_direction(p, seed=1), filter_normalized_direction(p, seed=2)
    assert all(torch.equal(d[k], again[k]) for k in d)
    assert not torch.equal(d["convs.0.weight"], other["convs.0.weight"])


@pytest.mark.parametrize("dims", [1, 2])
def test_random_slice_center_is_exact_and_directions_are_recovered(dims):
    (p,) = (to(q, dtype=torch.float64) for q in _nets(MLP, 1))
    sl = RandomSlice(p, dims=dims, seed=0)
    xy = torch.tensor([[0.0] * dims, [0.3] * dims], dtype=torch.float64)
    pts = sl.points(xy)
    assert all(torch.equal(pts[k][0], p[k]) for k in p)
    q = {k: v[1] for k, v in pts.items()}
    torch.testing.assert_close(torch.tensor(sl.coords(q), dtype=torch.float64), xy[1])
    assert sl.default_range() == [(-1.0, 1.0)] * dims


def test_surface_grid_equals_pointwise_evaluation(small_mnist1d):
    d = small_mnist1d
    model = build_model(MLP)
    a, b, c = _nets(MLP, 3)
    pl = Plane(a, b, c)
    res = evaluate_surface(model, pl, d, grid=4, chunk=5)
    (x0, x1), (y0, y1) = pl.default_range()
    xs = torch.tensor(list(pl.anchor_coords().values()))[:, 0]
    span = float(xs.max() - xs.min())
    assert x0 == pytest.approx(float(xs.min()) - 0.2 * span)  # 20% margin
    assert res.x[0] == pytest.approx(x0) and res.x[-1] == pytest.approx(x1)
    assert res.y[0] == pytest.approx(y0) and res.y[-1] == pytest.approx(y1)
    model.eval()
    for iy, y in enumerate(res.y):
        for ix, x in enumerate(res.x):
            p = {k: v[0] for k, v in pl.points(torch.tensor([[x, y]])).items()}
            with torch.no_grad():
                out = functional_call(model, p, (d.x_train,))
                ref = torch.nn.functional.cross_entropy(out, d.y_train).item()
                acc = (out.argmax(1) == d.y_train).double().mean().item()
            assert res.train_loss[iy][ix] == pytest.approx(ref, rel=1e-5)
            # the grid builds this point in a chunk of 5, the reference alone: logits agree to
            # round-off, so an exact tie may flip one prediction on some processors
            assert abs(res.train_acc[iy][ix] - acc) <= 1 / len(d.y_train) + 1e-12
    one = evaluate_surface(model, RandomSlice(a, dims=1), d, grid=5)
    assert one.y is None and len(one.train_loss) == 5
    assert one.train_loss[2] == pytest.approx(res_loss_at(model, a, d), rel=1e-5)  # x = 0: center


def res_loss_at(model, p: Params, d) -> float:
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(
            functional_call(model, p, (d.x_train,)), d.y_train
        ).item()


def test_a_one_bend_bezier_curve_lies_in_the_plane_of_its_control_points():
    a, b, bend = (to(p, dtype=torch.float64) for p in _nets(MLP, 3))
    curve = BezierPath(a, b, [bend])
    pl = Plane(a, b, bend, names=("A", "B", "bend"))
    xy = torch.tensor(project_path(pl, curve, points=9), dtype=torch.float64)
    back = pl.points(xy)
    ref = curve.points(torch.linspace(0, 1, 9, dtype=torch.float64))
    for k in ref:
        torch.testing.assert_close(back[k], ref[k], rtol=1e-10, atol=1e-10)


def test_bn_surface_center_reproduces_the_nets_own_metrics(small_mnist1d):
    from isthmus.params import bn_subset, evaluate

    d = small_mnist1d.subset(128, 64, seed=0)
    model = build_model(BN_CNN)
    (p,) = _nets(BN_CNN, 1)
    res = evaluate_surface(model, RandomSlice(p, dims=1, seed=0), d, grid=3)
    bn_x = bn_subset(d.x_train)
    tr = evaluate(model, [p], d.x_train, d.y_train, bn_x=bn_x)
    te = evaluate(model, [p], d.x_test, d.y_test, bn_x=bn_x)  # train-split statistics, always
    assert res.train_loss[1] == float(tr.loss[0]) and res.test_loss[1] == float(te.loss[0])
    assert res.train_acc[1] == float(tr.acc[0]) and res.test_acc[1] == float(te.acc[0])


def test_an_interrupted_surface_resumes_to_the_same_grid(small_mnist1d, tmp_path):
    import json

    d = small_mnist1d
    model = build_model(MLP)
    a, b, c = _nets(MLP, 3)
    ck = tmp_path / "surface.json"
    full = evaluate_surface(model, Plane(a, b, c), d, grid=4, chunk=5, checkpoint=ck)
    st = json.loads(ck.read_text())
    assert len(st["values"]["tl"]) == 16
    # keep the first chunk only, as if interrupted after it
    st["values"] = {k: v[:5] for k, v in st["values"].items()}
    ck.write_text(json.dumps(st))
    # the same chunk continues with the same batched calls: the same grid, to the last bit
    again = evaluate_surface(model, Plane(a, b, c), d, grid=4, chunk=5, checkpoint=ck, resume=True)
    assert again.train_loss == full.train_loss and again.test_acc == full.test_acc
    # another chunk would round differently (on some processors): refused, not mixed
    ck.write_text(json.dumps(st))
    with pytest.raises(IsthmusError, match="another surface"):
        evaluate_surface(model, Plane(a, b, c), d, grid=4, chunk=3, checkpoint=ck, resume=True)
    with pytest.raises(IsthmusError, match="another surface"):
        evaluate_surface(model, Plane(a, c, b), d, grid=4, checkpoint=ck, resume=True)
    with pytest.raises(IsthmusError, match="another surface"):
        evaluate_surface(model, Plane(a, b, c), d, grid=5, checkpoint=ck, resume=True)
    with pytest.raises(IsthmusError, match="no surface checkpoint"):
        evaluate_surface(model, Plane(a, b, c), d, grid=4, checkpoint=tmp_path / "x", resume=True)


def test_slice_through_picks_the_slice_from_what_is_given():
    from isthmus.surface import slice_through

    a, b, bend = (to(p, dtype=torch.float64) for p in _nets(MLP, 3))
    around = slice_through([a], dims=1, seed=3)
    assert isinstance(around, RandomSlice) and around.dims == 1 and around.seed == 3
    plane = slice_through([a, b, bend], ["a", "b", "c"])
    assert isinstance(plane, Plane) and plane.names == ["a", "b", "c"]
    # two nets and a curve: the plane through A, B and the curve's bend holds the whole curve
    curve = BezierPath(a, b, [bend])
    pl = slice_through([a, b], ["a", "b"], path=curve)
    assert pl.names == ["a", "b", "bend"]
    xy = torch.tensor(project_path(pl, curve, points=5), dtype=torch.float64)
    ref = curve.points(torch.linspace(0, 1, 5, dtype=torch.float64))
    back = pl.points(xy)
    for k in ref:
        torch.testing.assert_close(back[k], ref[k], rtol=1e-10, atol=1e-10)
    with pytest.raises(IsthmusError, match="got 2 net"):
        slice_through([a, b])
