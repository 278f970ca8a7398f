"""The Theorem 2 path (Kuditipudi et al. 2019): 5 segments, exact endpoints, function-preserving
(b) segments, an (a) segment bounded by L(A_1) and L(B_1), and disjoint kept sets."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import budget, loss_at, outputs_at, points_at
from hypothesis import given
from hypothesis import strategies as st

from isthmus.errors import IsthmusError
from isthmus.models import MLP, ConvNet, ConvPlan, ModelConfig, build_model, units_of
from isthmus.params import params_of
from isthmus.paths import complementary_kept, connect_noise, theorem2_path
from isthmus.paths.certificate import ConstructivePath, certify
from isthmus.stability import DropoutChoice, DropoutStability, dropout_params
from isthmus.train import TrainConfig, train_population

pytestmark = pytest.mark.usefixtures("one_thread")


def _disjoint(units, rng):
    ka, kb = {}, {}
    for layer in units.layers:
        perm = rng.sample(range(layer.size), layer.size)
        a = rng.randint(1, layer.size // 2)
        b = rng.randint(1, min(layer.size // 2, layer.size - a))
        ka[layer.name], kb[layer.name] = sorted(perm[:a]), sorted(perm[a : a + b])
    return ka, kb


@budget(30 / 25)
@given(
    kind=st.sampled_from(["mlp", "cnn"]),
    depth=st.integers(2, 5),
    width=st.integers(2, 7),
    seed=st.integers(0, 2**31 - 1),
)
def test_theorem2_path_on_random_nets(kind, depth, width, seed):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    if kind == "mlp":

        def make():
            return MLP(5, [width + j % 2 for j in range(depth - 1)], depth, 3).double()

        x = torch.randn(24, 5, dtype=torch.float64)
    else:
        plan = tuple([max(width, 2), "M"] + [3] * (depth - 2))

        def make():
            return ConvNet((1, 8), ConvPlan(channels=plan), 3).double()

        x = torch.randn(24, 8, dtype=torch.float64)
    model = make()
    pa, pb = params_of(model), params_of(make())
    y = torch.randint(0, 3, (24,))
    units = units_of(model)
    ka, kb = _disjoint(units, rng)
    path = theorem2_path(pa, pb, units, ka, kb)
    segs, cert = certify(model, path, x, y, strategy="vmap")
    nodes = path.nodes
    assert path.kinds == ["line", "b", "a", "b", "line"] and path.segment_count == 5
    assert all(torch.equal(nodes[0][k], pa[k]) and torch.equal(nodes[-1][k], pb[k]) for k in pa)
    a1, b1 = dropout_params(pa, units, ka), dropout_params(pb, units, kb)
    assert all(torch.equal(nodes[1][k], a1[k]) and torch.equal(nodes[4][k], b1[k]) for k in pa)
    kn = path.knots()
    for k in (1, 3):  # (b): outputs constant along the segment
        f0 = outputs_at(model, nodes[k], x)
        for s in (0.3, 0.5, 0.9, 1.0):
            f = outputs_at(model, points_at(path, [kn[k] + s * (kn[k + 1] - kn[k])])[0], x)
            assert float((f - f0).abs().max()) <= 1e-10 * max(1.0, float(f0.abs().max()))
    # (a): within max(L(A_1), L(B_1)) at 20 points
    bound = max(loss_at(model, a1, x, y), loss_at(model, b1, x, y))
    assert cert["bound"] == pytest.approx(bound, abs=1e-12)
    for s in torch.linspace(0, 1, 20).tolist():
        assert (
            loss_at(model, points_at(path, [kn[2] + s * (kn[3] - kn[2])])[0], x, y) <= bound + 1e-9
        )
    assert cert["holds"] and cert["certified_segments"] == [1, 2, 3]


def test_overlapping_kept_sets_are_refused():
    model = MLP(5, 6, 3, 3).double()
    units = units_of(model)
    pa = params_of(model)
    ka = {"layers.0": [0, 1], "layers.1": [0]}
    kb = {"layers.0": [1, 2], "layers.1": [3]}
    with pytest.raises(IsthmusError, match="disjoint"):
        theorem2_path(pa, pa, units, ka, kb)


def test_complementary_search_is_disjoint_and_deterministic():
    torch.manual_seed(0)
    model = MLP(5, [7, 6], 3, 3)
    pa, pb = params_of(model), params_of(MLP(5, [7, 6], 3, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    s1 = complementary_kept(model, pa, pb, x, y, draws=8, swaps=8, seed=3)
    s2 = complementary_kept(model, pa, pb, x, y, draws=8, swaps=8, seed=3)
    assert s1.kept_a == s2.kept_a and s1.kept_b == s2.kept_b
    units = units_of(model)
    for layer in units.layers:
        a, b = set(s1.kept_a[layer.name]), set(s1.kept_b[layer.name])
        assert not a & b and 1 <= len(a) <= layer.size // 2 and 1 <= len(b) <= layer.size // 2
    # the reported losses are those of the dropout versions, and the search never got worse
    assert s1.loss_a1 == pytest.approx(loss_at(model, dropout_params(pa, units, s1.kept_a), x, y))
    hist = s1.search["best_score_by_round"]
    assert all(b <= a for a, b in zip(hist, hist[1:], strict=False))


def test_connect_noise_end_to_end(small_mnist1d):
    data = small_mnist1d.subset(256, 128, seed=0)
    cfg = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(40,), num_classes=10)
    runs = train_population(cfg, data, TrainConfig(epochs=3, dropout=0.5), seeds=[0, 1])
    model = build_model(cfg)
    path, res = connect_noise(model, runs[0].params, runs[1].params, data, draws=8, points=11)
    assert len(res.segments) == 5 and res.certificate["holds"]
    assert res.certificate["bound"] == pytest.approx(
        max(res.certificate["loss_a1"], res.certificate["loss_b1"])
    )
    assert json.loads(json.dumps(res.to_json()))["method"] == "noise"
    # given dropout stability results with disjoint sets are used as they are
    units = units_of(model)
    ka, kb = _disjoint(units, random.Random(0))
    sa = DropoutStability(0.0, 0.0, [DropoutChoice(1, 0.0, ka, {})])
    sb = DropoutStability(0.0, 0.0, [DropoutChoice(1, 0.0, kb, {})])
    path, res = connect_noise(
        model, runs[0].params, runs[1].params, data, stability_a=sa, stability_b=sb, points=11
    )
    assert path.layout["kept_a"] == ka and res.extra["search"]["strategy"] == "given"


# ----------------------------------------------------------------------------- the certificate can fail


def _t2_pair():
    torch.manual_seed(4)
    model = MLP(5, [6, 7], 3, 3).double()
    pa, pb = params_of(model), params_of(MLP(5, [6, 7], 3, 3).double())
    units = units_of(model)
    ka, kb = _disjoint(units, random.Random(2))
    path = theorem2_path(pa, pb, units, ka, kb)
    x, y = torch.randn(24, 5, dtype=torch.float64), torch.randint(0, 3, (24,))
    assert certify(model, path, x, y)[1]["holds"]  # the unmodified path is certified
    return model, units, path, x, y


def _variant(path, *, nodes=None, kinds=None, versions=None):
    return ConstructivePath(
        list(path.nodes) if nodes is None else nodes,
        list(path.kinds) if kinds is None else kinds,
        head=path.head,
        layout=path.layout,
        method="noise",
        versions=path.versions if versions is None else versions,
    )


def test_theorem2_certificate_fails_for_a_perturbed_hidden_weight():
    model, units, path, x, y = _t2_pair()
    for k in (2, 3):  # inside the first (b) segment, and at the end of the (a) switch
        nodes = list(path.nodes)
        name = units.layers[1].incoming[0].name
        g = torch.Generator().manual_seed(k)
        noise = torch.randn(nodes[k][name].shape, generator=g, dtype=torch.float64)
        nodes[k] = {**nodes[k], name: nodes[k][name] + 0.5 * noise}
        assert not certify(model, _variant(path, nodes=nodes), x, y)[1]["holds"], k


def test_theorem2_certificate_fails_for_mislabelled_segments():
    model, units, path, x, y = _t2_pair()
    for kinds in (
        ["a", "b", "a", "b", "line"],  # the straight segment A -> A_1 claimed as an (a) move
        ["line", "b", "b", "b", "line"],  # the output switch claimed to preserve the function
        ["line", "a", "a", "b", "line"],  # rewriting free units claimed as an (a) move
        ["line", "b", "a", "b", "c"],
    ):
        assert not certify(model, _variant(path, kinds=kinds), x, y)[1]["holds"], kinds


def test_theorem2_switch_must_join_the_named_dropout_versions():
    model, units, path, x, y = _t2_pair()
    va, vb = path.versions[2], path.versions[3]
    assert (va.net, va.i, vb.net, vb.i) == ("A", 1, "B", 1)
    swapped = {**path.versions, 2: vb, 3: va}
    segs, cert = certify(model, _variant(path, versions=swapped), x, y)
    assert not cert["holds"] and not segs[2]["ends_are_versions"]
