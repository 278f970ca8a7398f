"""The Theorem 2 path (Kuditipudi et al. 2019): 5 segments, exact endpoints, function-preserving
(b) segments, an (a) segment bounded by L(A_1) and L(B_1), and disjoint kept sets."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

from isthmus.errors import IsthmusError
from isthmus.models import MLP, ConvNet, ConvPlan, ModelConfig, build_model, units_of
from isthmus.params import params_of
from isthmus.paths import complementary_kept, connect_noise, theorem2_path
from isthmus.paths.certificate import certify
from isthmus.stability import DropoutChoice, DropoutStability, dropout_params
from isthmus.train import TrainConfig, train_population

pytestmark = pytest.mark.usefixtures("one_thread")


def _out(model, p, x):
    with torch.no_grad():
        return functional_call(model, p, (x,))


def _point(path, t):
    # float64 t: Path.point builds a float32 tensor, which can land in the neighbouring segment
    return {k: v[0] for k, v in path.points(torch.tensor([t], dtype=torch.float64)).items()}


def _loss(model, p, x, y):
    return float(F.cross_entropy(_out(model, p, x), y))


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
        f0 = _out(model, nodes[k], x)
        for s in (0.3, 0.5, 0.9, 1.0):
            f = _out(model, _point(path, kn[k] + s * (kn[k + 1] - kn[k])), x)
            assert float((f - f0).abs().max()) <= 1e-10 * max(1.0, float(f0.abs().max()))
    # (a): within max(L(A_1), L(B_1)) at 20 points
    bound = max(_loss(model, a1, x, y), _loss(model, b1, x, y))
    assert cert["bound"] == pytest.approx(bound, abs=1e-12)
    for s in torch.linspace(0, 1, 20).tolist():
        assert _loss(model, _point(path, kn[2] + s * (kn[3] - kn[2])), x, y) <= bound + 1e-9
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
    assert s1.loss_a1 == pytest.approx(_loss(model, dropout_params(pa, units, s1.kept_a), x, y))
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
