"""NEB / AutoNEB on the Muller-Brown potential (saddles verified with scipy), spanning trees, nets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import MB_NEB, budget
from hypothesis import given
from hypothesis import strategies as st

from isthmus.errors import IsthmusError
from isthmus.landscape import muller_brown
from isthmus.models import ModelConfig, build_model
from isthmus.params import params_of
from isthmus.paths.neb import (
    NEBConfig,
    auto_neb,
    connect_neb,
    tangents,
)
from isthmus.paths.tree import connect_minima, connect_nets, spanning_tree

MB = MB_NEB


@pytest.mark.parametrize("ends,saddle", [(("A", "C"), "S1"), (("C", "B"), "S2")])
def test_climbing_image_neb_finds_the_saddle_height(mb, ends, saddle):
    (x0, _), (x1, _) = mb[ends[0]], mb[ends[1]]
    xs, es = mb[saddle]
    res = auto_neb(
        muller_brown, x0, x1, NEBConfig(pivots=7, cycles=1, steps=400, **MB), progress=False
    )
    top = int(res.losses.argmax())
    assert abs(float(res.losses[top]) - es) <= 0.02 * abs(es)
    assert float((res.pivots[top] - xs).norm()) < 0.02
    assert torch.equal(res.pivots[0], x0) and torch.equal(res.pivots[-1], x1)


def test_autoneb_inserts_pivots_where_a_coarse_chain_misses_the_saddles(mb):
    (xa, _), (xb, _) = mb["A"], mb["B"]
    (_, e1), (_, e2), (_, ec) = mb["S1"], mb["S2"], mb["C"]
    coarse = NEBConfig(pivots=1, cycles=1, steps=300, climb=False, **MB)
    c = auto_neb(muller_brown, xa, xb, coarse, progress=False)
    assert abs(c.max_loss - e1) > 0.02 * abs(e1)  # one bend cannot follow the valley
    auto = auto_neb(
        muller_brown, xa, xb, NEBConfig(pivots=1, cycles=6, steps=300, **MB), progress=False
    )
    assert sum(auto.inserted) > 0 and len(auto.pivots) > 3
    assert abs(auto.max_loss - e1) <= 0.02 * abs(e1)
    p = auto.profile
    inner = range(1, len(p) - 1)
    peaks = [float(p[i]) for i in inner if p[i] > p[i - 1] and p[i] > p[i + 1]]
    valleys = [float(p[i]) for i in inner if p[i] < p[i - 1] and p[i] < p[i + 1]]
    assert any(abs(v - e2) <= 0.02 * abs(e2) for v in peaks), peaks  # the second saddle too
    assert any(abs(v - ec) <= 0.02 * abs(ec) for v in valleys), valleys  # through minimum C


def test_spanning_tree_over_the_muller_brown_minima_is_the_known_one(mb):
    names = ["A", "B", "C"]
    minima = torch.stack([mb[n][0] for n in names])
    cfg = NEBConfig(pivots=3, cycles=3, steps=300, **MB)
    tree, res = connect_minima(muller_brown, minima, cfg, weight="barrier", progress=False)
    edges = {frozenset((names[i], names[j])) for i, j, _ in tree.edges}
    assert edges == {frozenset("AC"), frozenset("CB")}
    # the barrier of each tree edge is the saddle above the higher minimum
    w = dict(((names[i], names[j]), wt) for i, j, wt in tree.edges)
    assert w[("A", "C")] == pytest.approx(mb["S1"][1] - mb["C"][1], rel=0.02)
    assert w[("B", "C")] == pytest.approx(mb["S2"][1] - mb["C"][1], rel=0.02)
    # max-loss weights: the tree's worst edge bounds every pair (minimax), and it is saddle S1
    mtree, _ = connect_minima(muller_brown, minima, cfg, weight="max_loss", progress=False)
    for i, j in itertools.combinations(range(3), 2):
        assert mtree.bound(i, j) <= mtree.weights[i, j] + 1e-9
    assert mtree.worst == pytest.approx(mb["S1"][1], rel=0.02)


@budget(40 / 25)
@given(
    st.integers(2, 7).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.floats(-5, 5, allow_nan=False),
                min_size=n * (n - 1) // 2,
                max_size=n * (n - 1) // 2,
            ),
        )
    )
)
def test_spanning_tree_is_a_minimax_tree(case):
    n, vals = case
    w = np.zeros((n, n))
    w[np.triu_indices(n, 1)] = vals
    w = w + w.T
    tree = spanning_tree(w)
    assert len(tree.edges) == n - 1
    for i, j in itertools.combinations(range(n), 2):
        assert tree.route(i, j)[0] == i and tree.route(i, j)[-1] == j
        assert tree.bound(i, j) <= w[i, j] + 1e-12  # zero and negative weights included
    # total weight is minimal: no single edge swap improves it (cut property on every tree edge)
    for u, v, wt in tree.edges:
        rest = [(a, b) for a, b, _ in tree.edges if (a, b) != (u, v)]
        side = {u}
        grew = True
        while grew:
            grew = False
            for a, b in rest:
                if (a in side) != (b in side):
                    side |= {a, b}
                    grew = True
        crossing = [w[a, b] for a in side for b in range(n) if b not in side]
        assert wt <= min(crossing) + 1e-12


def test_improved_tangent_points_uphill_on_a_monotone_chain():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [3.0, 1.0]], dtype=torch.float64)
    up = tangents(x, torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(up[0], torch.tensor([0.0, 1.0], dtype=torch.float64))  # x2 - x1
    torch.testing.assert_close(up[1], torch.tensor([1.0, 0.0], dtype=torch.float64))  # x3 - x2
    down = tangents(x, torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(down[0], torch.tensor([1.0, 0.0], dtype=torch.float64))  # x1 - x0
    torch.testing.assert_close(down[1], torch.tensor([0.0, 1.0], dtype=torch.float64))  # x2 - x1


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(kind="mlp", depth=3, width=8, input_shape=(40,)),
        ModelConfig(kind="cnn", channels=(4, "M"), batchnorm=True, input_shape=(40,)),
    ],
)
def test_neb_between_nets_gives_an_exact_piecewise_path(cfg, small_mnist1d):
    d = small_mnist1d.subset(128, 64, seed=0)
    model = build_model(cfg)
    a, b = params_of(build_model(cfg)), params_of(build_model(cfg))
    path, res = connect_neb(
        model,
        a,
        b,
        d,
        NEBConfig(pivots=2, cycles=2, steps=5, grid=3, threshold=0.0),
        seed=0,
        progress=False,
    )
    assert path.method == "neb"
    assert len(path.nodes) == len(res.pivots) >= 4  # threshold 0 inserts
    kn = path.knots()
    assert kn[0] == 0.0 and kn[-1] == 1.0 and all(y > x for x, y in zip(kn, kn[1:], strict=False))
    ends = path.points(torch.tensor([0.0, 1.0]))
    assert all(torch.equal(ends[k][0], a[k]) and torch.equal(ends[k][1], b[k]) for k in a)
    assert torch.isfinite(res.profile).all()
    again, _ = connect_neb(
        model,
        a,
        b,
        d,
        NEBConfig(pivots=2, cycles=2, steps=5, grid=3, threshold=0.0),
        seed=0,
        progress=False,
    )
    assert all(
        torch.equal(p[k], q[k]) for p, q in zip(path.nodes, again.nodes, strict=True) for k in p
    )


def test_spanning_tree_over_nets_bounds_every_pair(small_mnist1d):
    d = small_mnist1d.subset(128, 64, seed=0)
    cfg_m = ModelConfig(kind="mlp", depth=2, width=8, input_shape=(40,))
    model = build_model(cfg_m)
    nets = [params_of(build_model(cfg_m)) for _ in range(3)]
    cfg = NEBConfig(pivots=1, cycles=1, steps=3, grid=3)
    records: dict[str, dict] = {}
    tree, paths = connect_nets(
        model, nets, d, cfg, points=7, progress=False, on_pair=records.__setitem__
    )
    assert len(tree.edges) == 2 and set(paths) == {(0, 1), (0, 2), (1, 2)}
    for (i, j), path in paths.items():
        assert all(torch.equal(path.start[k], nets[i][k]) for k in nets[i])
        assert tree.bound(i, j) <= tree.weights[i, j]
        assert tree.weights[i, j] == records[f"{i}-{j}"]["max_loss"]
    # resuming with one pair done computes only the other two, to the same tree
    again, new = connect_nets(
        model, nets, d, cfg, points=7, progress=False, done={"0-1": records["0-1"]}
    )
    assert set(new) == {(0, 2), (1, 2)} and np.array_equal(again.weights, tree.weights)


def test_a_tree_checkpoint_resumes_pair_by_pair(small_mnist1d, tmp_path):
    import json

    from isthmus.paths.tree import connect_tree

    d = small_mnist1d.subset(128, 64, seed=0)
    cfg_m = ModelConfig(kind="mlp", depth=2, width=8, input_shape=(40,))
    model = build_model(cfg_m)
    nets = [params_of(build_model(cfg_m)) for _ in range(3)]
    kw = dict(method="linear", points=5, progress=False, names=["a", "b", "c"])
    ck = tmp_path / "tree.json"
    tree, pairs = connect_tree(model, nets, d, checkpoint=ck, **kw)
    state = json.loads(ck.read_text())
    assert (
        state["done"] and state["pairs"] == pairs and state["settings"]["runs"] == ["a", "b", "c"]
    )
    assert state["tree"] == json.loads(json.dumps(tree.to_json()))
    with pytest.raises(IsthmusError, match="pass --resume"):
        connect_tree(model, nets, d, checkpoint=ck, **kw)
    # one pair kept, and a record no computation would give: resume keeps it, computes the rest
    fake = {**pairs["0-1"], "max_loss": 123.0}
    ck.write_text(json.dumps({**state, "pairs": {"0-1": fake}, "done": False}))
    again, resumed = connect_tree(model, nets, d, checkpoint=ck, resume=True, **kw)
    assert resumed == {**pairs, "0-1": fake} and again.weights[0, 1] == 123.0
    with pytest.raises(IsthmusError, match="another tree"):
        connect_tree(model, nets, d, checkpoint=ck, resume=True, **{**kw, "points": 7})
    with pytest.raises(IsthmusError, match="no tree checkpoint"):  # nothing to resume
        connect_tree(model, nets, d, checkpoint=tmp_path / "new.json", resume=True, **kw)


def test_interrupted_autoneb_between_nets_resumes_to_the_same_path(
    small_mnist1d, tmp_path, monkeypatch
):
    import isthmus.paths.neb as neb_mod

    d = small_mnist1d.subset(128, 64, seed=0)
    cfg = ModelConfig(kind="mlp", depth=3, width=8, input_shape=(40,))
    model = build_model(cfg)
    a, b = params_of(build_model(cfg)), params_of(build_model(cfg))
    ncfg = NEBConfig(pivots=2, cycles=3, steps=4, grid=3, threshold=0.0)
    kw = dict(seed=1, progress=False, batch_size=32)
    full, res = connect_neb(model, a, b, d, ncfg, **kw)
    real_save, calls = neb_mod.save_checkpoint, []

    def save_then_stop(*args, **kwargs):  # the run dies right after its first checkpoint
        real_save(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(neb_mod, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        connect_neb(model, a, b, d, ncfg, checkpoint=tmp_path, **kw)
    monkeypatch.setattr(neb_mod, "save_checkpoint", real_save)
    assert calls == [1]
    resumed, rres = connect_neb(model, a, b, d, ncfg, checkpoint=tmp_path, resume=True, **kw)
    assert rres.history == res.history and rres.inserted == res.inserted
    assert all(
        torch.equal(p[k], q[k]) for p, q in zip(full.nodes, resumed.nodes, strict=True) for k in p
    )
    with pytest.raises(IsthmusError, match="another NEB"):
        connect_neb(model, a, b, d, ncfg, checkpoint=tmp_path, resume=True, seed=2)
    with pytest.raises(IsthmusError, match="no NEB checkpoint"):
        connect_neb(model, a, b, d, ncfg, checkpoint=tmp_path / "x", resume=True)
