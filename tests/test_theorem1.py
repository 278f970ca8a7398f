"""The Theorem 1 path (Kuditipudi et al. 2019) on random small nets: its certificate must hold.

The property test draws MLPs and 1-D CNNs (depths 2-5, odd and even widths, float64) and kept sets
for both nets that overlap and differ between start layers; every example builds the path with the
default placement and with a placement that forces the scratch round, so shadow chains and both
duplicate-and-shift rounds run. Everything the certificate claims is re-checked here independently:
outputs by direct forward passes, losses by a plain formula, the dropout versions by
`stability.dropout_params`, and the live units of A* from the weights themselves.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import budget, loss_at, outputs_at, points_at, relative_deviation
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call, vmap

from isthmus.errors import IsthmusError
from isthmus.io import load_tensors, save_tensors
from isthmus.models import MLP, ConvNet, ConvPlan, ModelConfig, build_model, units_of
from isthmus.params import params_of
from isthmus.paths import evaluate_path
from isthmus.paths.certificate import ConstructivePath, Version, certify
from isthmus.paths.dropout import connect_dropout, segment_formula, theorem1_path
from isthmus.stability import DropoutChoice, DropoutStability, dropout_params
from isthmus.train import TrainConfig, train_population

# ----------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_thread")


def _outs(model, path, ts, x):
    """Outputs at many t of the path in one vmapped call: (len(ts), N, C)."""
    pts = path.points(torch.as_tensor(ts, dtype=torch.float64))
    with torch.no_grad():
        return vmap(lambda p: functional_call(model, p, (x,)))(pts)


def _losses(f, y, loss):
    if loss == "ce":
        P, N, C = f.shape
        return (
            F.cross_entropy(f.reshape(-1, C), y.repeat(P), reduction="none").reshape(P, N).mean(1)
        )
    return ((f - y) ** 2).sum(-1).mean(-1)


def _live(p, units):
    """Live units per hidden layer, read off the weights: reachable from the output layer through
    nonzero weights (the test's own view of which units the output depends on)."""
    layers = units.layers
    live = [None] * len(layers)
    readers = None  # rows of the layer above that are live (None: output layer, all rows)
    for l in range(len(layers) - 1, -1, -1):
        alive = set()
        for o in layers[l].outgoing:
            t = p[o.name]
            rows = t if readers is None else t.index_select(0, torch.tensor(sorted(readers)))
            for u in range(layers[l].size):
                cols = o.index(torch.tensor([u]))
                if rows.index_select(o.axis, cols).abs().sum() > 0:
                    alive.add(u)
        live[l] = alive
        readers = alive
    return live


def _cyclic(l, free, targets):
    """A placement that writes some unit onto another unit's free target slot, so that unit's
    target is occupied and the scratch round must run (whenever a layer has >= 2 units and a free
    target)."""
    k, fset = len(targets), set(free)
    hit = next((m for m, t in enumerate(targets) if t in fset), None)
    if k < 2 or hit is None:
        return free[:k]
    other = (hit + 1) % k
    out = [None] * k
    out[other] = targets[hit]
    rest = iter(s for s in free if s != targets[hit])
    return [s if s is not None else next(rest) for s in out]


# ----------------------------------------------------------------------------- strategies


def _subset(rng: random.Random, h: int, avoid: list[int] | None = None) -> list[int]:
    """A random kept set of 1..floor(h/2) units, different from `avoid`."""
    while True:
        s = sorted(rng.sample(range(h), rng.randint(1, h // 2)))
        if s != avoid:
            return s


def _kept_sets(rng: random.Random, units, first: list[int] | None = None) -> dict:
    """{i: (kept, None)} for every start layer, each layer's set differing between start layers."""
    sizes = [x.size for x in units.layers]
    names = [x.name for x in units.layers]
    n = len(sizes)
    out, prev = {}, {}
    for i in range(n, 0, -1):
        kept = {}
        for l in range(i - 1, n):
            kept[names[l]] = _subset(rng, sizes[l], prev.get(l))
        if i == 1 and first is not None:
            kept[names[0]] = first
        prev = {names.index(k): v for k, v in kept.items()}
        out[i] = (kept, None)
    return out


@st.composite
def problems(draw):
    kind = draw(st.sampled_from(["mlp", "cnn"]))
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "mlp":
        depth = draw(st.integers(2, 5))
        widths = [draw(st.integers(4, 7))] + [draw(st.integers(2, 7)) for _ in range(depth - 2)]

        def make():
            return MLP(5, widths, depth, 3).double()

        shape = (5,)
    else:
        n_conv = draw(st.integers(1, 3))
        fc = draw(st.sampled_from([(), (draw(st.integers(2, 5)),)]))
        plan: list = [4]
        pools = 0
        for _ in range(n_conv - 1):
            if pools < 2 and draw(st.booleans()):
                plan.append("M")
                pools += 1
            plan.append(draw(st.integers(2, 4)))
        if pools < 2 and draw(st.booleans()):
            plan.append("M")

        def make():
            return ConvNet((1, 8), ConvPlan(channels=tuple(plan), fc=fc), 3).double()

        shape = (8,)
    model = make()
    pa, pb = params_of(model), params_of(make())
    loss = draw(st.sampled_from(["ce", "ce", "mse"]))
    n = draw(st.integers(16, 32))
    x = torch.randn(n, *shape, dtype=torch.float64)
    y = torch.randint(0, 3, (n,)) if loss == "ce" else torch.randn(n, 3, dtype=torch.float64)
    rng = draw(st.randoms(use_true_random=False))
    units = units_of(model)
    # A's and B's theta_1 sets in layer 1 overlap, and B's has a unit outside A's: step 3 moves
    # units, and the cyclic placement below always needs the scratch round.
    h0 = units.layers[0].size
    sa0 = _subset(rng, h0)
    u = rng.choice(sa0)
    v = rng.choice([w for w in range(h0) if w not in sa0])
    extra = [w for w in range(h0) if w not in (u, v)]
    sb0 = sorted({u, v, *rng.sample(extra, rng.randint(0, h0 // 2 - 2))})
    ca = _kept_sets(rng, units, sa0)
    cb = _kept_sets(rng, units, sb0)
    return model, pa, pb, x, y, loss, ca, cb


# ----------------------------------------------------------------------------- the property test


def _check(model, pa, pb, x, y, loss, ca, cb, placement):
    units = units_of(model)
    d = units.depth
    n = d - 1
    path = theorem1_path(pa, pb, units, ca, cb, placement=placement)
    # vmap for speed; "loop" for mse (params.evaluate's vmapped mse path mixes dtypes)
    segs, cert = certify(model, path, x, y, loss, strategy="vmap" if loss == "ce" else "loop")
    nodes, kinds, kn = path.nodes, path.kinds, path.knots()

    # endpoints are exactly A and B
    for k in pa:
        assert torch.equal(nodes[0][k], pa[k]) and torch.equal(nodes[-1][k], pb[k])
    p0, p1 = points_at(path, [0.0, 1.0])
    assert all(torch.equal(p0[k], pa[k]) and torch.equal(p1[k], pb[k]) for k in pa)

    # segment count and pattern: 4d - 3 + 2R
    R = path.layout["rounds"]
    assert len(kinds) == segment_formula(d, R) == 4 * d - 3 + 2 * R
    step1 = ["a"] + ["b", "a"] * (n - 1)
    assert kinds == step1 + ["b", "a"] + ["b", "c"] * R + ["b"] + step1[::-1]

    # A*'s live units (from the weights) are those the construction recorded
    a_star = nodes[len(step1)]
    live = _live(a_star, units)
    assert [sorted(s) for s in live] == list(path.layout["a_star_live"].values())
    targets = list(path.layout["b1_target"].values())
    if placement == "direct":
        blocked = any(set(t) & live[l] for l, t in enumerate(targets))
        assert R == (1 if blocked else 0) and not path.layout["scratch_units"]
    elif placement is _cyclic:
        assert R == 2 and path.layout["scratch_units"]  # both rounds ran
    else:
        assert R == 2 if path.layout["scratch_units"] else R <= 1

    # the (a) switches of step 1 land on the dropout versions theta_{d-1}, ..., theta_1
    f_a = [outputs_at(model, dropout_params(pa, units, ca[i][0]), x) for i in range(n, 0, -1)]
    f_b = [outputs_at(model, dropout_params(pb, units, cb[i][0]), x) for i in range(n, 0, -1)]
    for j in range(n):
        assert relative_deviation(outputs_at(model, nodes[2 * j + 1], x), f_a[j]) <= 1e-10
        assert relative_deviation(outputs_at(model, nodes[-2 - 2 * j], x), f_b[j]) <= 1e-10

    # (b)/(c) segments preserve the outputs; (a) segments change only the output layer
    losses = [loss_at(model, p, x, y, loss) for p in nodes]
    for k, kind in enumerate(kinds):
        s = torch.cat([torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), torch.rand(3)]).double()
        if kind in "bc":
            f = _outs(model, path, kn[k] + s * (kn[k + 1] - kn[k]), x)
            f0 = outputs_at(model, nodes[k], x)
            assert max(relative_deviation(fj, f0) for fj in f) <= 1e-10
            assert segs[k]["max_output_deviation"] <= 1e-10
        else:
            assert all(
                torch.equal(nodes[k][name], nodes[k + 1][name])
                for name in pa
                if name not in path.head
            )
        assert segs[k]["loss0"] == pytest.approx(losses[k], abs=1e-12)

    # the bound is the max of the (a)-segment endpoint losses only ...
    bound = max(max(losses[k], losses[k + 1]) for k, kind in enumerate(kinds) if kind == "a")
    assert cert["bound"] == pytest.approx(bound, abs=1e-12)
    # ... which is within max(L_A, L_B) + eps (eps from the test's own dropout versions)
    la, lb = losses[0], losses[-1]
    eps_a = max(loss_at(model, dropout_params(pa, units, ca[i][0]), x, y, loss) for i in ca) - la
    eps_b = max(loss_at(model, dropout_params(pb, units, cb[i][0]), x, y, loss) for i in cb) - lb
    assert bound <= max(la + max(eps_a, 0), lb + max(eps_b, 0)) + 1e-9
    assert bound <= max(la, lb) + max(eps_a, eps_b, 0) + 1e-9

    # the loss at >= 20 points of every segment stays within the bound
    ts = torch.cat(
        [torch.linspace(a, b, 21, dtype=torch.float64) for a, b in zip(kn, kn[1:], strict=False)]
    )
    assert float(_losses(_outs(model, path, ts, x), y, loss).max()) <= bound + 1e-9
    assert cert["holds"]
    assert cert["min_points_per_segment"] >= 20
    assert cert["max_loss_on_path"] <= bound + 1e-9


@pytest.mark.slow
@budget(100 / 25)
@given(problems())
def test_theorem1_certificate_holds_on_random_nets(problem):
    model, pa, pb, x, y, loss, ca, cb = problem
    _check(model, pa, pb, x, y, loss, ca, cb, "direct")
    _check(model, pa, pb, x, y, loss, ca, cb, _cyclic)


@budget(20 / 25)
@given(problems())
def test_theorem1_lowest_placement(problem):
    """The placement of docs/provable_paths.md (lowest free slots) keeps every guarantee too."""
    _check(*problem, "lowest")


# ----------------------------------------------------------------------------- the Path contract


def _small_pair(kind="mlp"):
    torch.manual_seed(3)
    cfg = (
        ModelConfig(kind="mlp", depth=3, width=(6, 5), input_shape=(8,), num_classes=3)
        if kind == "mlp"
        else ModelConfig(kind="cnn", channels=(4, "M", 5), input_shape=(8,), num_classes=3)
    )
    model = build_model(cfg).double()
    pa, pb = params_of(model), params_of(build_model(cfg).double())
    units = units_of(model)
    rng = random.Random(0)
    return model, pa, pb, units, _kept_sets(rng, units), _kept_sets(rng, units)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_path_is_a_normal_path(kind, tmp_path, small_mnist1d):
    model, pa, pb, units, ca, cb = _small_pair(kind)
    path = theorem1_path(pa, pb, units, ca, cb)
    # points at the knots are the nodes, exactly
    pts = points_at(path, path.knots())
    for p, node in zip(pts, path.nodes, strict=True):
        assert all(torch.equal(p[k], node[k]) for k in node)
    # dense evaluation through the generic evaluator
    data = small_mnist1d.subset(64, 32, seed=1).to(dtype=torch.float64)
    data = type(data)(
        data.name,
        data.x_train[:, :8],
        data.y_train % 3,
        data.x_test[:, :8],
        data.y_test % 3,
        3,
        data.task,
        (8,),
    )
    res = evaluate_path(model, path, data, points=11)
    assert res.train_loss[0] == pytest.approx(loss_at(model, pa, data.x_train, data.y_train, "ce"))
    assert res.train_loss[-1] == pytest.approx(loss_at(model, pb, data.x_train, data.y_train, "ce"))
    # the tensors round-trip through safetensors
    save_tensors(tmp_path / "path.safetensors", path.tensors())
    back = ConstructivePath.from_tensors(load_tensors(tmp_path / "path.safetensors"))
    assert back.kinds == path.kinds and set(back.head) == set(path.head)
    # with the versions path.json keeps, the reloaded path certifies as the original does
    x, y = data.x_train, data.y_train
    named = json.loads(json.dumps(path.versions_json()))
    again = ConstructivePath.from_tensors(
        load_tensors(tmp_path / "path.safetensors"), versions=named
    )
    assert again.versions == path.versions and certify(model, again, x, y)[1]["holds"]
    assert not certify(model, back, x, y)[1]["holds"]  # no named versions: nothing certified
    ts = torch.rand(17, dtype=torch.float64)
    a, b = path.points(ts), back.points(ts)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_depth_one_is_a_single_a_segment():
    model = MLP(4, [], 1, 3).double()
    pa, pb = params_of(model), params_of(MLP(4, [], 1, 3).double())
    path = theorem1_path(pa, pb, units_of(model), {}, {})
    assert path.kinds == ["a"]
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    _, cert = certify(model, path, x, y)
    assert cert["holds"]


def test_bad_inputs_are_refused():
    model, pa, pb, units, ca, cb = _small_pair()
    with pytest.raises(IsthmusError, match="start layer"):
        theorem1_path(pa, pb, units, {1: ca[1]}, cb)
    big = {name: list(range(units.layers[j].size // 2 + 1)) for j, name in enumerate(ca[1][0])}
    with pytest.raises(IsthmusError, match="exceed"):
        theorem1_path(pa, pb, units, {**ca, 1: (big, None)}, cb)
    kept1 = ca[1][0]
    for r in ({k: 1e30 for k in kept1}, {k: float("nan") for k in kept1}):  # absurd factors
        with pytest.raises(IsthmusError, match="factor"):
            theorem1_path(pa, pb, units, {**ca, 1: (kept1, r)}, cb)
    from isthmus.stability import default_r

    scaled = {k: 1.5 * v for k, v in default_r(units, kept1).items()}  # one fitted multiplier
    theorem1_path(pa, pb, units, {**ca, 1: (kept1, scaled)}, cb)
    if len(kept1) > 1:  # factors that are not one multiplier of the defaults
        uneven = dict(zip(scaled, [1.0, *[3.0] * (len(scaled) - 1)], strict=True))
        with pytest.raises(IsthmusError, match="one multiplier"):
            theorem1_path(pa, pb, units, {**ca, 1: (kept1, uneven)}, cb)
    stray = {**default_r(units, kept1), "no.such.layer": 1.0}  # a factor without a kept set
    with pytest.raises(IsthmusError, match="no.such.layer"):
        theorem1_path(pa, pb, units, {**ca, 1: (kept1, stray)}, cb)
    with pytest.raises(IsthmusError, match="placement"):
        theorem1_path(pa, pb, units, ca, cb, placement=lambda l, free, t: free[:1] * len(t))
    with pytest.raises(IsthmusError, match="placement"):
        theorem1_path(pa, pb, units, ca, cb, placement="nearest")
    cfg = ModelConfig(kind="cnn", channels=(4, "M"), input_shape=(8,), batchnorm=True)
    bn = build_model(cfg)
    with pytest.raises(IsthmusError, match="BatchNorm"):
        connect_dropout(bn, params_of(bn), params_of(bn), None)


# ----------------------------------------------------------------------------- end to end


def _choices(units, rng):
    return [DropoutChoice(i, 0.0, kept, {}) for i, (kept, _) in _kept_sets(rng, units).items()]


def test_connect_dropout_on_trained_nets(small_mnist1d):
    data = small_mnist1d.subset(256, 128, seed=0)
    cfg = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(40,), num_classes=10)
    runs = train_population(cfg, data, TrainConfig(epochs=3, dropout=0.5, lr=0.05), seeds=[0, 1])
    model = build_model(cfg)
    units = units_of(model)
    rng = random.Random(1)
    sa = DropoutStability(0.0, 0.0, _choices(units, rng))
    sb = DropoutStability(0.0, 0.0, _choices(units, rng))
    path, res = connect_dropout(
        model, runs[0].params, runs[1].params, data, stability_a=sa, stability_b=sb, points=11
    )
    cert = res.certificate
    assert cert["holds"] and cert["bound_within_theorem"]
    assert cert["segment_count"] == path.segment_count == len(res.segments)
    assert cert["max_loss_on_path"] <= cert["bound"] + 1e-9
    assert (
        cert["bound"]
        <= max(cert["loss_a"], cert["loss_b"])
        + max(cert["epsilon_a_float64"], cert["epsilon_b_float64"], 0)
        + 1e-9
    )
    for s in res.segments:
        assert {"kind", "t0", "t1", "loss0", "loss1", "max_output_deviation"} <= set(s)
    doc = json.loads(json.dumps(res.to_json()))
    assert doc["method"] == "dropout" and doc["certificate"]["holds"]
    # the path's endpoints are the nets, in float64
    assert all(torch.equal(path.start[k], runs[0].params[k].double()) for k in path.start)


def test_connect_dropout_runs_the_stability_search(small_mnist1d):
    """Without stability results the kept sets come from `dropout_stability`; path, certificate
    and epsilon agree."""
    data = small_mnist1d.subset(128, 64, seed=2)
    cfg = ModelConfig(kind="mlp", depth=3, width=8, input_shape=(40,), num_classes=10)
    runs = train_population(cfg, data, TrainConfig(epochs=2, dropout=0.5), seeds=[0, 1])
    model = build_model(cfg)
    path, res = connect_dropout(model, runs[0].params, runs[1].params, data, seed=1, points=11)
    cert = res.certificate
    assert cert["holds"] and cert["bound_within_theorem"]
    assert cert["epsilon_a_float64"] == pytest.approx(cert["epsilon_a"], abs=1e-5)
    assert cert["epsilon_b_float64"] == pytest.approx(cert["epsilon_b"], abs=1e-5)


def test_certified_path_plot(tmp_path):
    from isthmus.paths.base import PathResult
    from isthmus.plot import certified_path

    model, pa, pb, units, ca, cb = _small_pair()
    path = theorem1_path(pa, pb, units, ca, cb)
    x, y = torch.randn(20, 8, dtype=torch.float64), torch.randint(0, 3, (20,))
    segs, cert = certify(model, path, x, y)
    ts = torch.linspace(0, 1, 11, dtype=torch.float64)
    res = PathResult("dropout", ts.tolist(), [1.0] * 11, [0.5] * 11, [1.0] * 11, [0.5] * 11, {})
    res = PathResult(**{**res.__dict__, "segments": segs, "certificate": cert})
    out = certified_path(res, tmp_path / "fig", line=res.to_json())
    assert out.exists() and out.stat().st_size > 0


def test_certify_ignores_dropout_masks_of_a_training_mode_model():
    """A model built with dropout and left in training mode is certified without masks."""
    model, pa, pb, units, ca, cb = _small_pair()
    noisy = MLP(8, (6, 5), 3, 3, dropout=0.5).double().train()
    path = theorem1_path(pa, pb, units, ca, cb)
    x, y = torch.randn(20, 8, dtype=torch.float64), torch.randint(0, 3, (20,))
    _, cert = certify(noisy, path, x, y)
    assert cert["holds"] and noisy.training


# ----------------------------------------------------------------------------- the certificate can fail


def _relabelled(path, *, nodes=None, kinds=None, versions=None):
    """The same path with some nodes, kinds or named versions replaced."""
    return ConstructivePath(
        list(path.nodes) if nodes is None else nodes,
        list(path.kinds) if kinds is None else kinds,
        head=path.head,
        notes=path.notes,
        layout=path.layout,
        versions=path.versions if versions is None else versions,
    )


def _holds(model, path, x, y):
    return certify(model, path, x, y)[1]["holds"]


def _perturbed(p, name, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {**p, name: p[name] + 0.5 * torch.randn(p[name].shape, generator=g, dtype=p[name].dtype)}


def _cyclic_pair():
    model, pa, pb, units, ca, cb = _small_pair()
    path = theorem1_path(pa, pb, units, ca, cb, placement=_cyclic)
    x, y = torch.randn(20, 8, dtype=torch.float64), torch.randint(0, 3, (20,))
    assert "c" in path.kinds and _holds(model, path, x, y)  # the unmodified path is certified
    return model, pa, pb, units, ca, cb, path, x, y


@pytest.mark.parametrize("kind", ["b", "c"])
def test_a_perturbed_hidden_weight_inside_a_b_or_c_segment_fails(kind):
    model, pa, pb, units, ca, cb, path, x, y = _cyclic_pair()
    k = path.kinds.index(kind)
    nodes = list(path.nodes)
    nodes[k + 1] = _perturbed(nodes[k + 1], units.layers[0].incoming[0].name)
    segs, cert = certify(model, _relabelled(path, nodes=nodes), x, y)
    assert not cert["holds"] and segs[k]["max_output_deviation"] > 1e-10


def test_a_mislabelled_segment_fails():
    model, pa, pb, units, ca, cb, path, x, y = _cyclic_pair()
    for old, new in (("b", "a"), ("c", "a"), ("a", "b"), ("a", "c")):
        kinds = list(path.kinds)
        kinds[kinds.index(old)] = new
        assert not _holds(model, _relabelled(path, kinds=kinds), x, y), (old, new)


def test_a_straight_line_presented_as_a_certified_path_fails():
    model, pa, pb, units, ca, cb = _small_pair()
    x, y = torch.randn(20, 8, dtype=torch.float64), torch.randint(0, 3, (20,))
    ends = {0: Version("A"), 1: Version("B")}
    for kind in ("a", "b", "c"):
        straight = ConstructivePath([pa, pb], [kind], head=units.head, versions=ends)
        assert not _holds(model, straight, x, y), kind
    # a line without named versions, or only measured, certifies nothing either
    assert not _holds(model, ConstructivePath([pa, pb], ["a"], head=units.head), x, y)
    assert not _holds(model, ConstructivePath([pa, pb], ["line"], head=units.head), x, y)


def test_a_segments_must_end_at_the_named_dropout_versions():
    model, pa, pb, units, ca, cb, path, x, y = _cyclic_pair()
    a_end = path.kinds.index("a") + 1  # node that is theta_{A,d-1}
    v = path.versions[a_end]
    assert v.net == "A" and v.i == units.depth - 1
    shifted = {
        la.name: sorted((u + 1) % la.size for u in v.kept[la.name])
        for la in units.layers[v.i - 1 :]
    }
    others = [
        {},  # nothing named
        {**path.versions, a_end: Version("B", v.i, v.kept, v.r)},  # the other net
        {**path.versions, a_end: Version("A", v.i, shifted, v.r)},  # other kept units
        {**path.versions, a_end: Version("A", v.i - 1, None, None)},  # another start layer
    ]
    for versions in others:
        segs, cert = certify(model, _relabelled(path, versions=versions), x, y)
        assert not cert["holds"]
        assert not all(s["ends_are_versions"] for s in segs if s["kind"] == "a")


def test_connect_dropout_checks_its_versions_against_the_stability_results(small_mnist1d):
    from isthmus.paths.dropout import versions_agree
    from isthmus.stability import default_r

    model, pa, pb, units, ca, cb = _small_pair()
    path = theorem1_path(pa, pb, units, ca, cb)
    given = [DropoutChoice(i, 0.0, kept, r) for i, (kept, r) in ca.items()]
    assert versions_agree(path, "A", given, units)
    wrong = [DropoutChoice(i, 0.0, kept, r) for i, (kept, r) in cb.items()]
    assert ca == cb or not versions_agree(path, "A", wrong, units)
    assert not versions_agree(path, "A", given[:-1], units)
    other_r = [
        DropoutChoice(c.i, 0.0, c.kept, {k: 2 * v for k, v in default_r(units, c.kept).items()})
        for c in given
    ]
    assert not versions_agree(path, "A", other_r, units)  # the factors are part of the version
