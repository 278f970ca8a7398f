"""Fort & Jastrzebski's orthogonal path finder: on Muller-Brown (saddles verified with scipy), on
nets (exact ends, lower barrier, same seed same path, resume) and through `isthmus connect`."""

from __future__ import annotations

import json

import pytest
import torch

from isthmus.errors import IsthmusError
from isthmus.landscape import MullerBrown, as_point, muller_brown
from isthmus.models import ModelConfig, build_model
from isthmus.params import params_of
from isthmus.paths import evaluate_path, line
from isthmus.paths.orthogonal import OrthogonalConfig, connect_orthogonal, orthogonal_path
from isthmus.train import TrainConfig, train_population

MB = dict(optimizer="adam", lr=0.01, steps=200)  # 2-D test surface settings
MLP = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(40,))


def _check_orthogonal(res, rel: float) -> None:
    """Every pivot's displacement from its start on its segment is orthogonal to the segment,
    recomputed from the nodes and the recorded (left, right, s) alone; and it moved."""
    x, ids = res.nodes.double(), res.ids
    assert len(res.history) >= 1
    for h in res.history:
        a, b, p = x[ids.index(h["left"])], x[ids.index(h["right"])], x[ids.index(h["pivot"])]
        axis, d = b - a, p - (a + h["s"] * (b - a))
        assert d.norm() > 0
        assert abs(float(d @ axis)) <= rel * float(d.norm() * axis.norm()), h


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.01), ("sgd", 1e-4)])
def test_on_muller_brown_the_path_crosses_near_the_saddle_not_over_the_hill(mb, optimizer, lr):
    (xa, _), (xb, _), (_, es) = mb["A"], mb["B"], mb["S1"]
    land = MullerBrown()
    a, b = as_point(xa), as_point(xb)
    cfg = OrthogonalConfig(depth=4, steps=200, optimizer=optimizer, lr=lr)
    path, res = connect_orthogonal(land, a, b, cfg=cfg)
    top = max(evaluate_path(land, path, points=801).train_loss)
    straight = max(evaluate_path(land, line(a, b), points=801).train_loss)
    assert straight - es > 50  # the line crosses the hill between the minima (about +12.7)
    # every path from A to B rises to at least the lower saddle S1; this one hardly more
    assert es - 0.01 <= top <= es + 0.1, (top, es)
    assert path.method == "orthogonal" and path.nodes[0] is a and path.nodes[-1] is b
    ends = path.points(torch.tensor([0.0, 1.0], dtype=torch.float64))["x"]
    assert torch.equal(ends[0], xa) and torch.equal(ends[1], xb)
    _check_orthogonal(res, 1e-12)
    # recorded node losses are the potential at the nodes
    assert torch.allclose(res.losses, muller_brown(res.nodes))
    kn = path.knots()
    assert kn[0] == 0.0 and kn[-1] == 1.0 and all(q > p for p, q in zip(kn, kn[1:], strict=False))


def test_depth_and_tolerance_bound_the_splits(mb):
    land = MullerBrown()
    a, b = mb["A"][0], mb["B"][0]
    one = orthogonal_path(land, a, b, OrthogonalConfig(depth=1, **MB))
    assert len(one.history) == 1 and len(one.nodes) == 3 and one.ids == [0, 2, 1]
    deep = orthogonal_path(land, a, b, OrthogonalConfig(depth=6, **MB))
    assert len(deep.history) <= 2**6 - 1
    # a segment is split only while its highest point is above both its ends
    assert all(h["segment_barrier"] > 0 for h in deep.history)
    huge = orthogonal_path(land, a, b, OrthogonalConfig(depth=6, tolerance=1e3, **MB))
    assert huge.history == [] and torch.equal(huge.nodes, torch.stack([a, b]))


def test_the_first_pivot_starts_at_the_highest_grid_point_of_the_line(mb):
    land = MullerBrown()
    a, b = mb["A"][0], mb["B"][0]
    res = orthogonal_path(land, a, b, OrthogonalConfig(depth=1, grid=9, **MB))
    s = torch.linspace(0, 1, 11, dtype=torch.float64)[1:-1]
    e = muller_brown(a[None] + s[:, None] * (b - a)[None])
    h = res.history[0]
    assert h["s"] == float(s[int(e.argmax())]) and h["loss_start"] == float(e.max())
    assert h["loss"] < h["loss_start"] - 50  # it slid down the hill


@pytest.fixture(scope="module")
def two_nets(small_mnist1d):
    runs = train_population(
        MLP, small_mnist1d, TrainConfig(epochs=30, batch_size=64), [0, 1], progress=False
    )
    return build_model(MLP), runs[0].params, runs[1].params


def test_between_nets_the_barrier_falls_and_the_ends_are_exact(two_nets, small_mnist1d):
    model, a, b = two_nets
    d = small_mnist1d
    cfg = OrthogonalConfig(depth=2, steps=40, lr=0.05, grid=7)
    path, res = connect_orthogonal(model, a, b, d, cfg, batch_size=64, seed=0, progress=False)
    straight = evaluate_path(model, line(a, b), d, points=21).barrier["train_loss"]
    found = evaluate_path(model, path, d, points=21).barrier["train_loss"]
    assert straight > 0.1
    assert found <= straight / 2, (straight, found)
    assert all(path.nodes[0][k] is a[k] and path.nodes[-1][k] is b[k] for k in a)
    ends = path.points(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert all(torch.equal(ends[k][0], a[k]) and torch.equal(ends[k][1], b[k]) for k in a)
    _check_orthogonal(res, 1e-4)  # float32 nets: rounding of an 1,000-entry dot product
    again, _ = connect_orthogonal(model, a, b, d, cfg, batch_size=64, seed=0, progress=False)
    other, _ = connect_orthogonal(model, a, b, d, cfg, batch_size=64, seed=1, progress=False)
    same = [
        torch.equal(p[k], q[k]) for p, q in zip(path.nodes, again.nodes, strict=True) for k in p
    ]
    assert all(same)
    assert not torch.equal(path.nodes[1]["layers.0.weight"], other.nodes[1]["layers.0.weight"])


def test_an_interrupted_run_resumes_to_the_same_path(
    two_nets, small_mnist1d, tmp_path, monkeypatch
):
    import isthmus.paths.orthogonal as mod

    model, a, b = two_nets
    d = small_mnist1d.subset(128, 64, seed=0)
    cfg = OrthogonalConfig(depth=2, steps=6, grid=7)
    kw = dict(batch_size=32, seed=3, progress=False)
    full, res = connect_orthogonal(model, a, b, d, cfg, **kw)
    assert len(res.history) >= 2
    real_save, calls = mod.save_checkpoint, []

    def save_then_stop(*args, **kwargs):  # the run dies right after its first pivot
        real_save(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        connect_orthogonal(model, a, b, d, cfg, checkpoint=tmp_path, **kw)
    monkeypatch.setattr(mod, "save_checkpoint", real_save)
    assert calls == [1]
    resumed, rres = connect_orthogonal(model, a, b, d, cfg, checkpoint=tmp_path, resume=True, **kw)
    assert rres.history == res.history and rres.ids == res.ids
    assert all(
        torch.equal(p[k], q[k]) for p, q in zip(full.nodes, resumed.nodes, strict=True) for k in p
    )
    with pytest.raises(IsthmusError, match="another orthogonal path"):
        connect_orthogonal(model, a, b, d, cfg, checkpoint=tmp_path, resume=True, seed=4)
    with pytest.raises(IsthmusError, match="no orthogonal path checkpoint"):
        connect_orthogonal(model, a, b, d, cfg, checkpoint=tmp_path / "x", resume=True)


def test_bad_settings_are_refused():
    for depth in (0, 21):  # 2^depth - 1 pivots at most: a typo must not run for ever
        with pytest.raises(IsthmusError, match="depth"):
            OrthogonalConfig(depth=depth).validate()
    with pytest.raises(IsthmusError, match="tolerance"):
        OrthogonalConfig(tolerance=-1).validate()
    net = params_of(build_model(MLP))
    with pytest.raises(IsthmusError, match="needs data"):
        connect_orthogonal(build_model(MLP), net, net)


@pytest.mark.e2e
def test_connect_method_orthogonal_writes_a_resumable_path(tmp_path):
    from isthmus.cli import main
    from isthmus.data import load
    from isthmus.io import load_tensors
    from isthmus.paths import load_path
    from isthmus.train import train

    data = load("gaussians")
    spec = {"name": "gaussians", "root": None, "seed": 0}
    mlp = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(20,))
    for s in (0, 1):
        train(mlp, data, TrainConfig(epochs=1, batch_size=256), seed=s, out=tmp_path / f"m{s}",
              progress=False, data_spec=spec)  # fmt: skip
    out = tmp_path / "orth"
    args = ["connect", str(tmp_path / "m0"), str(tmp_path / "m1"), "--method", "orthogonal"]
    args += ["--points", "7", "--batch-size", "512", "--epochs", "1", "--depth", "2"]
    assert main([*args, "--out", str(out)]) == 0
    pj = json.loads((out / "path.json").read_text())
    assert pj["method"] == "orthogonal" and pj["orthogonal"]["depth"] == 2
    assert pj["pivots"] == len(pj["orthogonal_history"]) and len(pj["segments"]) == pj["pivots"] + 1
    assert pj["barrier"]["train_loss"] <= pj["linear"]["barrier"]["train_loss"]
    path = load_path(out)
    assert path.method == "orthogonal" and len(path.nodes) == pj["pivots"] + 2
    first = load_tensors(out / "path.safetensors")
    assert main([*args, "--out", str(out), "--resume"]) == 0  # a finished run resumes to itself
    again = load_tensors(out / "path.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)
