"""Ensemble metrics on hand-made logits with known answers, their properties, and the member
sources (runs, a curve, a subspace, training snapshots) on small nets."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st

from isthmus import ensemble as E
from isthmus import io
from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig, build_model
from isthmus.params import evaluate, params_of, stack

LOG2 = math.log(2)


def big(classes: list[int], c: int = 3, scale: float = 50.0) -> torch.Tensor:
    """Logits (N, c) that put (almost) all probability on the given classes."""
    return torch.nn.functional.one_hot(torch.tensor(classes), c).double() * scale


def same(xs: list[dict], ys: list[dict]) -> bool:
    """Two lists of parameter dicts hold bit-identical tensors."""
    return len(xs) == len(ys) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        for x, y in zip(xs, ys, strict=True)
    )


# ----------------------------------------------------------------------------- known answers


def test_identical_members_are_the_member():
    g = torch.Generator().manual_seed(1)
    one = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (20,), generator=g)
    m = E.metrics(one.expand(3, 20, 4), y)
    lp = torch.log_softmax(one, -1)
    assert m.disagreement == 0 and m.kl == 0 and abs(m.js) < 1e-15
    assert m.accuracy == pytest.approx(float((one.argmax(-1) == y).double().mean()))
    assert m.nll == pytest.approx(float(-lp[torch.arange(20), y].mean()), rel=1e-12)
    assert m.member_nll == pytest.approx([m.nll] * 3, rel=1e-12)
    assert m.accuracy_vs_members["nll"] == pytest.approx([m.nll] * 3, rel=1e-12)


def test_two_members_with_known_disagreements():
    y = torch.tensor([0, 1, 2, 0])
    a = big([0, 1, 2, 0])  # all right
    b = big([0, 1, 0, 1])  # wrong on the last two
    c = big([1, 1, 2, 0])  # wrong on the first
    m = E.metrics(torch.stack([a, b, c]), y)
    want = torch.tensor([[0, 0.5, 0.25], [0.5, 0, 0.75], [0.25, 0.75, 0]], dtype=torch.float64)
    assert torch.equal(torch.tensor(m.disagreement_matrix), want)
    assert m.disagreement == pytest.approx(0.5)
    assert m.member_accuracy == [1.0, 0.5, 0.75]
    # confident members that disagree are (nearly) disjoint distributions: JS -> log 2 per point
    js = torch.tensor(m.js_matrix, dtype=torch.float64)
    assert torch.allclose(js, want * LOG2, atol=1e-12, rtol=0)
    # majority of probability: on point 0 members a, b say 0, c says 1 -> ensemble says 0
    assert m.accuracy == 1.0
    # a + b tie on points 2 (classes 2, 0) and 3 (0, 1); a tie goes to the lower class: 3 of 4
    assert m.accuracy_vs_members["accuracy"] == [1.0, 0.75, 1.0]


def test_kl_of_known_distributions_both_directions():
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64).log()
    q = torch.tensor([[0.9, 0.1]], dtype=torch.float64).log()
    kl = E.kl_matrix(torch.stack([p, q]))
    pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert kl[0, 1] == pytest.approx(pq, rel=1e-12) and kl[1, 0] == pytest.approx(qp, rel=1e-12)
    m = E.metrics(torch.stack([p, q]), torch.tensor([0]))
    assert m.kl == pytest.approx((pq + qp) / 2, rel=1e-12)  # mean over both directions


def test_nll_is_stable_for_confident_wrong_members():
    """A probability of exp(-1000) is 0 in float64; the ensemble's log must still be finite."""
    y = torch.tensor([1])
    logits = torch.tensor([[[1000.0, 0.0]], [[1000.0, 0.0]]])
    m = E.metrics(logits, y)
    assert m.nll == pytest.approx(1000.0, rel=1e-9) and math.isfinite(m.ece)


def test_ece_of_calibrated_and_overconfident_toys():
    # 10 points at confidence 0.7 on class 0, 7 of them right: calibrated, ECE 0
    p = torch.tensor([0.7, 0.3], dtype=torch.float64).log().expand(10, 2)
    y = torch.tensor([0] * 7 + [1] * 3)
    assert E.ece(p, y) == pytest.approx(0.0, abs=1e-12)
    # two bins: 0.7 calibrated (10 points), 0.95 all right (10 points): ECE = 10/20 * 0.05
    q = torch.tensor([0.05, 0.95], dtype=torch.float64).log().expand(10, 2)
    both = torch.cat([p, q])
    labels = torch.cat([y, torch.ones(10, dtype=torch.long)])
    assert E.ece(both, labels) == pytest.approx(0.025, rel=1e-12)
    # all points in one bin, all wrong at confidence 0.9: ECE 0.9
    r = torch.tensor([0.9, 0.1], dtype=torch.float64).log().expand(5, 2)
    assert E.ece(r, torch.ones(5, dtype=torch.long)) == pytest.approx(0.9, rel=1e-12)


def test_growth_is_the_ensemble_of_the_first_members_and_orders_average():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 30, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (30,), generator=g)
    acc, nl = E.growth(logits, y)
    for m in range(1, 5):
        lp = E.ensemble_log_probs(logits[:m])
        assert acc[m - 1] == E.accuracy(lp, y)
        assert nl[m - 1] == pytest.approx(float(E.nll(lp, y)), rel=1e-12)
    a1, n1 = E.growth_over_orders(logits, y, 6, seed=3)
    a2, n2 = E.growth_over_orders(logits, y, 6, seed=3)
    assert torch.equal(a1, a2) and torch.equal(n1, n2)  # same seed, same numbers
    assert n1[-1] == pytest.approx(float(nl[-1]), rel=1e-12)  # all members: order is irrelevant
    assert n1[0] == pytest.approx(
        sum(float(E.nll(E.log_probs(logits[order[:1]]), y)) for order in _orders(4, 6, 3)) / 6
    )


def _orders(m: int, n: int, seed: int) -> list[torch.Tensor]:
    from isthmus.seeding import generator

    g = generator(seed, 0, 131)
    return [torch.randperm(m, generator=g) for _ in range(n)]


def test_fewer_than_two_members_or_bad_shapes_are_refused():
    with pytest.raises(IsthmusError, match="at least 2 members"):
        E.metrics(torch.zeros(1, 3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(IsthmusError, match=r"\(M, N, C\)"):
        E.metrics(torch.zeros(2, 4, 2), torch.zeros(3, dtype=torch.long))


def test_pca_separates_two_groups_and_is_sign_stable():
    a = torch.tensor([[0.9, 0.1]], dtype=torch.float64).expand(3, 1, 2)
    b = torch.tensor([[0.1, 0.9]], dtype=torch.float64).expand(2, 1, 2)
    (ca, cb), explained = E.prediction_pca([a, b])
    assert explained[0] == pytest.approx(1.0) and ca.shape == (3, 2) and cb.shape == (2, 2)
    assert torch.allclose(ca[:, 0], ca[0, 0].expand(3)) and ca[0, 0] * cb[0, 0] < 0
    (ca2, _), _ = E.prediction_pca([a.clone(), b.clone()])
    assert torch.equal(ca, ca2)


# ----------------------------------------------------------------------------- properties

logit_sets = st.tuples(
    st.integers(2, 4), st.integers(1, 12), st.integers(2, 5), st.integers(0, 999)
)


def _random(m: int, n: int, c: int, seed: int, scale: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(m, n, c, generator=g, dtype=torch.float64)
    return logits, torch.randint(0, c, (n,), generator=g)


@budget()
@given(logit_sets, st.sampled_from([0.1, 4.0, 40.0]))
def test_js_symmetric_nonnegative_bounded_and_ensemble_nll_convex(shape, scale):
    logits, y = _random(*shape, scale=scale)
    js = E.js_matrix(logits)
    assert torch.allclose(js, js.T, atol=1e-12)
    assert (js >= -1e-12).all() and (js <= LOG2 + 1e-12).all()
    assert (E.kl_matrix(logits) >= -1e-12).all()
    kl = E.kl_matrix(logits)  # KL(p || m) <= KL(p || q) / 2 by convexity, so JS <= (KL + KL^T) / 4
    assert (js <= (kl + kl.T) / 4 + 1e-12).all()
    m = E.metrics(logits, y)
    # -log of a mean probability <= mean of -log (Jensen), point by point, hence on average
    assert m.nll <= sum(m.member_nll) / len(m.member_nll) + 1e-12
    assert 0 <= m.ece <= 1 and 0 <= m.disagreement <= 1


# ----------------------------------------------------------------------------- members on nets


def _nets(n: int, cfg: ModelConfig | None = None) -> tuple[torch.nn.Module, list]:
    cfg = cfg or ModelConfig(width=16, depth=2)
    torch.manual_seed(0)
    model = build_model(cfg)
    nets = []
    for _ in range(n):
        nets.append(params_of(build_model(cfg)))
    return model, nets


@pytest.mark.parametrize(
    "cfg",
    [ModelConfig(width=16, depth=2), ModelConfig(kind="cnn", channels=(4, "M"), batchnorm=True)],
)
def test_member_logits_score_like_evaluate(cfg, small_mnist1d, one_thread):
    """Each member's accuracy and NLL from its logits are params.evaluate's (BN policy too)."""
    from isthmus.params import bn_subset

    d = small_mnist1d
    model, nets = _nets(3, cfg)
    bn_x = bn_subset(d.x_train)
    logits = E.member_logits(model, nets, d.x_test, batch_size=100, bn_x=bn_x)
    ref = evaluate(model, nets, d.x_test, d.y_test, bn_x=bn_x)
    m = E.metrics(logits, d.y_test)
    assert m.member_accuracy == pytest.approx(ref.acc.tolist(), abs=1e-12)
    assert m.member_nll == pytest.approx(ref.loss.tolist(), rel=1e-5)
    if not cfg.batchnorm:  # the batched (vmap) call gives the loop's logits
        v = E.member_logits(model, stack(nets), d.x_test, strategy="vmap", chunk=2)
        assert torch.allclose(v, logits, atol=1e-5)


def test_sources_runs_curve_subspace_snapshots(tmp_path, small_mnist1d, one_thread):
    from isthmus.models import ModelConfig as MC
    from isthmus.paths import line
    from isthmus.paths.connect import connect, save_path

    d = small_mnist1d
    cfg = MC(width=16, depth=2)
    model, nets = _nets(3, cfg)
    conf = io.run_config(cfg, {"name": "mnist1d", "root": None, "seed": 0}, {}, 0)
    dirs = [io.save_run(tmp_path / f"r{i}", p, conf) for i, p in enumerate(nets)]
    runs = E.from_runs(dirs)
    assert same(runs.members, nets)

    con = connect(model, nets[0], nets[1], d, "linear", points=5)
    from dataclasses import replace

    ab = [(str(dirs[0]), nets[0]), (str(dirs[1]), nets[1])]
    extra = {"runs": [str(dirs[0]), str(dirs[1])]}
    save_path(tmp_path / "line", con.path, replace(con.result, extra=extra), io.inputs_record(ab))
    curve = E.from_path(tmp_path / "line", 3)
    assert curve.detail["t"] == [0.25, 0.5, 0.75]
    want = line(nets[0], nets[1]).point(0.5)
    assert all(torch.allclose(curve.members[1][k], want[k]) for k in want)
    rnd = E.from_path(tmp_path / "line", 4, spacing="random", seed=5)
    assert (
        rnd.detail["t"] == E.from_path(tmp_path / "line", 4, spacing="random", seed=5).detail["t"]
    )
    assert all(0 < t < 1 for t in rnd.detail["t"]) and rnd.detail["t"] == sorted(rnd.detail["t"])

    class Stub:  # what isthmus.subspace.load_subspace returns: module, sample, vertices
        module = model
        vertices = nets

        def sample(self, n: int, generator: torch.Generator):
            e = -torch.rand(n, 3, generator=generator, dtype=torch.float64).log()
            ws = e / e.sum(1, keepdim=True)  # uniform on the simplex (Dirichlet(1, 1, 1))
            return {k: torch.einsum("pk,k...->p...", ws.to(v.dtype), stack(nets)[k])
                    for k, v in nets[0].items()}  # fmt: skip

    sub = E.subspace_source(Stub(), 4, seed=1)
    again = E.subspace_source(Stub(), 4, seed=1)
    assert len(sub.members) == 4
    assert same(sub.members, again.members)

    res = E.compare([runs, curve, sub], d, orders=2, seed=0)
    doc = res.to_json()
    assert set(doc["sources"]) == {"runs", "curve", "subspace"} and doc["split"] == "test"
    for name, s in doc["sources"].items():
        assert s["members"] == (3 if name != "subspace" else 4)
        assert len(res.pca["coords"][name]) == s["members"]
        assert len(s["accuracy_vs_members"]["accuracy_mean_over_orders"]) == s["members"]
    # the three runs' members as one source are the runs' own metrics
    ref = evaluate(model, nets, d.x_test, d.y_test)
    assert res.sources["runs"].member_accuracy == pytest.approx(ref.acc.tolist())


def test_snapshot_source(tmp_path, one_thread):
    cfg = ModelConfig(width=16, depth=2)
    _, nets = _nets(4, cfg)
    conf = io.run_config(cfg, {"name": "mnist1d", "root": None, "seed": 0}, {}, 0)
    run = io.save_run(tmp_path / "run", nets[-1], conf)
    for e, p in zip((5, 10, 15, 20), nets, strict=True):
        io.save_tensors(run / "snapshots" / f"epoch_{e:04d}.safetensors", p)
    src = E.from_snapshots(run, 3)
    assert src.detail["epochs"] == [10, 15, 20]
    assert same(src.members, nets[1:])


def test_refusals_name_the_problem(tmp_path, small_mnist1d):
    model, nets = _nets(2)
    src = E.Source("runs", model, nets)
    with pytest.raises(IsthmusError, match="names must differ"):
        E.compare([src, src], small_mnist1d)
    with pytest.raises(IsthmusError, match="split must be"):
        E.compare([src], small_mnist1d, split="valid")
    (tmp_path / "p").mkdir()
    io.write_json(tmp_path / "p" / "path.json", {"method": "linear"})
    with pytest.raises(IsthmusError, match="no field 'runs'"):
        E.from_path(tmp_path / "p", 3)
    with pytest.raises(IsthmusError, match="spacing"):
        E.curve_times(3, "log")
