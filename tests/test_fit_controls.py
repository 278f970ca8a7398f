"""The fitter's bookkeeping against the mathematics it stands for: members built without autograd
and the gradient handed to the controls equal autograd through sum_k w_k control_k bit for bit;
the cached Gram matrix equals the direct one; a lazy penalty is taken every k-th step at k times
its weight; `combine` sums only the nonzero terms and equals the full sum bit for bit."""

from __future__ import annotations

import pytest
import torch
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st

from isthmus.landscape import Quadratic
from isthmus.params import combine
from isthmus.paths.fit import FitConfig, _Controls, fit_family
from isthmus.subspace import SimplicialComplex
from isthmus.subspace.complex import gram


def _nets(V: int, seed: int, dtype=torch.float32) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "a": torch.randn(3, 4, generator=g, dtype=dtype),
            "b": torch.randn(5, generator=g, dtype=dtype),
            "n": torch.tensor(7),  # a non-floating entry rides along
        }
        for _ in range(V)
    ]


def _dense(weights: torch.Tensor, stacked: dict, keys) -> dict:
    """The definition, term by term over all K controls."""
    w = weights.to(next(iter(stacked.values())).dtype)
    out = {}
    for k in keys:
        flat = stacked[k].reshape(len(stacked[k]), -1)
        out[k] = sum(w[:, j, None] * flat[j] for j in range(w.shape[1])).reshape(
            len(w), *stacked[k].shape[1:]
        )
    return out


@budget(1)
@given(
    N=st.integers(1, 4),
    M=st.integers(1, 3),
    P=st.integers(1, 6),
    hot=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_members_and_their_gradient_equal_autograd_through_the_combination(N, M, P, hot, seed):
    nets = _nets(N + M, seed)
    family = SimplicialComplex(nets, [tuple(range(N + M))], fixed=range(N))
    K = len(family.controls())
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(P, K, generator=g, dtype=torch.float64)
    w = w * (torch.rand(P, K, generator=g) < 0.6)  # sparse rows, as simplex draws are
    if hot:
        w[0] = 0
        w[0, K - 1] = 1.0  # an exact copy of a trainable control
    keys = ["a", "b"]
    ctl = _Controls(family, keys, torch.device("cpu"))
    pts = ctl.members(w)
    up = torch.randn(P, generator=g)
    loss = sum(((pts[k] ** 2).reshape(P, -1).sum(1) * up).sum() for k in keys)
    loss.backward()
    ctl.distribute(pts, w)
    got = ctl.tensors()  # leaves per tensor; their gradients below
    grads = {k: v for dt, t in ctl.leaves.items() for k, v in ctl.split(t.grad, dt).items()}

    controls = family.controls()
    leaves = {
        k: torch.stack([controls[i][k] for i in family.trainable()]).clone().requires_grad_(True)
        for k in keys
    }
    stacked = {}
    for k in keys:
        rows, j = [], 0
        for i in range(K):
            if i in family.trainable():
                rows.append(leaves[k][j])
                j += 1
            else:
                rows.append(controls[i][k])
        stacked[k] = torch.stack(rows)
    want = _dense(w, stacked, keys)
    for k in keys:
        assert torch.equal(pts[k].detach(), want[k].detach()), k
        assert torch.equal(got[k], leaves[k].detach())
    ref = sum(((want[k] ** 2).reshape(P, -1).sum(1) * up).sum() for k in keys)
    ref.backward()
    for k in keys:  # one member (subspace training): the same products; more: the same sum
        if P == 1:  # in an order the reduction kernel picks for the shape
            assert torch.equal(grads[k], leaves[k].grad), k
        else:
            assert torch.allclose(grads[k], leaves[k].grad, rtol=1e-6, atol=1e-7), k
    assert torch.equal(pts["n"], torch.tensor(7).expand(P))


@pytest.mark.parametrize("fixed", [(0, 1, 2), (1, 2), ()])
@pytest.mark.parametrize("relative", [True, False])
def test_the_cached_gram_matrix_equals_the_direct_one(fixed, relative):
    nets = _nets(5, 3, torch.float64)
    cx = SimplicialComplex(nets, [(0, 1, 2), (2, 3, 4)], fixed=fixed, volume=1.0)
    ctl = _Controls(cx, ["a", "b"], torch.device("cpu"))
    stacked = {k: torch.stack([n[k] for n in nets]) for k in ("a", "b")}
    want = gram(stacked, relative)
    for _ in range(2):  # the second call uses the cached block
        got = ctl.gram(relative)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    pen_fit = cx.penalty_of_gram(ctl.gram)
    pen_direct = cx.penalty(stacked)
    assert float(pen_fit.detach()) == pytest.approx(float(pen_direct), rel=1e-10)
    if not cx.trainable():
        return
    # pull_gram hands any dG / G gradient to the trainable vertices as autograd through `gram`
    dG = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ctl.pull_gram(dG, relative)
    ref = {k: v.clone().requires_grad_(True) for k, v in stacked.items()}
    (dG * gram(ref, relative)).sum().backward()
    got = ctl.split(ctl.leaves[torch.float64].grad, torch.float64)
    for k in ("a", "b"):
        want = ref[k].grad[cx.trainable()]
        assert torch.allclose(got[k], want, rtol=1e-10, atol=1e-12), k


class _Counting(SimplicialComplex):
    calls: list[float] = []

    def penalty_grad_of_gram(self, G_of):  # what the fit calls (closed form)
        out = super().penalty_grad_of_gram(G_of)
        _Counting.calls.append(float(out[True].abs().sum()))
        return out

    def with_controls(self, controls):
        return _Counting(controls, self.simplices, self.fixed, volume=self.volume)


@pytest.mark.parametrize("every", [1, 3])
def test_a_lazy_penalty_is_taken_every_kth_step(every):
    land = Quadratic(torch.eye(4, dtype=torch.float64))
    pts = [{"x": torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(i))}
           for i in range(4)]  # fmt: skip
    cx = _Counting(pts, [(0, 2, 3), (1, 2, 3)], fixed=(0, 1), volume=1e-3)
    _Counting.calls = []
    fit_family(land, cx, cfg=FitConfig(epochs=7, lr=0.01, penalty_every=every), progress=False)
    assert len(_Counting.calls) == len(range(0, 7, every))


def test_penalty_every_is_validated():
    with pytest.raises(Exception, match="penalty_every"):
        FitConfig(penalty_every=0).validate()


@budget(1)
@given(P=st.integers(1, 12), K=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_combine_sums_only_nonzero_terms_and_equals_the_full_sum(P, K, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(K, 3, 2, generator=g)
    w = torch.rand(P, K, generator=g, dtype=torch.float64) * (torch.rand(P, K, generator=g) < 0.5)
    got = combine(w, {"c": c}, {"c": c[0]})["c"]
    want = _dense(w, {"c": c}, ["c"])["c"]
    hot = ((w != 0).sum(1) == 1) & (w.max(1).values == 1)
    assert torch.equal(got[~hot], want[~hot])
    as_list = combine(w, {"c": list(c)}, {"c": c[0]})["c"]
    assert torch.equal(got, as_list)
    for p in range(P):  # each point's numbers do not depend on the other points
        assert torch.equal(combine(w[p : p + 1], {"c": c}, {"c": c[0]})["c"][0], got[p])


@pytest.mark.parametrize(
    "model_kw,family",
    [
        (dict(kind="mlp", depth=3, width=16), "complex"),
        (dict(kind="mlp", depth=2, width=8), "bezier"),
        (dict(kind="cnn", channels=(4, "M"), batchnorm=True), "complex"),
        (dict(kind="resnet", depth=1, width=1), "chain"),
    ],
)
def test_the_direct_member_path_gives_the_numbers_of_the_general_one(
    model_kw, family, monkeypatch, small_mnist1d
):
    """One member per step runs through a module copy whose parameters are views of one buffer
    (`_Direct`); it must give the fit of members + functional call + distribute, bit for bit
    (BatchNorm nets under batch statistics included)."""
    from isthmus import paths
    from isthmus.models import ModelConfig, build_model
    from isthmus.params import params_of
    from isthmus.paths import BezierPath, ChainPath
    from isthmus.subspace import star

    data = small_mnist1d
    cfg = ModelConfig(input_shape=data.input_shape, num_classes=data.num_classes, **model_kw)
    nets = []
    for s in range(4):
        torch.manual_seed(s)
        nets.append(params_of(build_model(cfg)))
    model = build_model(cfg)
    if family == "complex":
        fam = star(nets[:3], nets[3:], volume=1e-3)
    elif family == "bezier":
        fam = BezierPath.on_line(nets[0], nets[1], bends=1)
    else:
        fam = ChainPath.on_line(nets[0], nets[1], bends=2)
    fc = FitConfig(epochs=2, batch_size=64, lr=0.05, samples=1)

    def fit(direct: bool):
        monkeypatch.setattr(paths.fit, "DIRECT", direct)
        return fit_family(model, fam, data, fc, seed=3, progress=False)

    a, b = fit(True), fit(False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for ca, cb in zip(a.path.controls(), b.path.controls(), strict=True):
        for k in ca:
            assert torch.equal(ca[k], cb[k]), k
    monkeypatch.setattr(paths.fit, "DIRECT", True)
    keys = [n for n, _ in model.named_parameters()]
    ctl = paths.fit._Controls(fam, keys, torch.device("cpu"))
    assert paths.fit._Direct.of(model, ctl, fc) is not None  # the direct path was taken
