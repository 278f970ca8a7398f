"""Every step of the proof in docs/counterexample.md, checked on the explicit data sets."""

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st

from isthmus import counterexample as ce

CASES = [(h, "polygon") for h in range(2, 9)] + [(h, "cyclic4") for h in (5, 9, 14)]


@pytest.mark.parametrize("h,base", CASES)
def test_teacher_labels_exactly(h, base):
    X, y = ce.make_dataset(h, base)
    T = ce.teacher_params(h, base)
    assert float(ce.loss(T, X, y)) == 0.0
    lab = ce.check_labels(h, base)
    assert lab["max_abs_zero_label"] == 0.0 and lab["min_positive_label"] > 0.0
    assert torch.equal(y > 0, torch.arange(len(y)) < h)  # positives first, then zeros


@pytest.mark.parametrize("h,base", CASES)
def test_minimisers_are_exact_fits_with_different_invariants(h, base):
    X, y = ce.make_dataset(h, base)
    T, P = ce.minimisers(h, base)
    assert float(ce.loss(T, X, y)) == 0.0
    assert float(ce.loss(P, X, y)) < 1e-28
    assert float(T["layers.1.weight"][0, 1]) < 0  # teacher: a negative output weight
    assert bool((P["layers.1.weight"] > 0).all())
    assert ce.invariant(T, X) is None
    assert ce.invariant(P, X) == tuple(range(h))


@pytest.mark.parametrize("h,base", CASES)
def test_minimisers_load_into_the_isthmus_mlp(h, base):
    X, _ = ce.make_dataset(h, base)
    model = ce.student(h, base)
    for p in ce.minimisers(h, base):
        assert set(p) == set(model.state_dict()) and all(
            t.dtype == torch.float64 for t in p.values()
        )
        model.load_state_dict(p)
        # two float64 computations of one function (module vs formula): equal to BLAS round-off
        assert torch.allclose(model(X)[:, 0], ce.forward(p, X), atol=0, rtol=1e-12)


@pytest.mark.parametrize("h,base", CASES)
def test_lemma3_blocking_lp(h, base):
    # no affine unit that is <= 0 on the zero samples is positive at two positive samples
    assert ce.check_blocking(h, base) <= 1e-9


@pytest.mark.parametrize("h,base", CASES)
def test_epsilon_inside_lemma3_bound_and_labels_on_the_decreasing_side(h, base):
    e = ce.check_epsilon(h, base)
    assert 0 < e["eps"] < e["bound"]
    assert 0.5 <= e["t_min"] and e["t_max"] < 1.0  # teacher = 1 - t > 0 there


@pytest.mark.parametrize("h,base", CASES)
def test_lemma4_private_units(h, base):
    assert ce.check_private_units(h, base)


@pytest.mark.parametrize("h,base", CASES)
def test_lemma3_random_aimed_units(h, base):
    counts = ce.active_positives(ce.random_admissible_units(h, 4000, seed=h, base=base), h, base)
    assert int(counts.max()) == 1 and float((counts == 1).float().mean()) > 0.1


def test_lemma3_checks_fail_when_eps_is_too_large(monkeypatch):
    # the checks have teeth: positives pushed 8x too far are shared by one admissible unit
    orig = ce.construction

    def far(h, base="polygon"):
        c = orig(h, base)
        return ce.Construction(
            c.h,
            c.base,
            c.centres + 8 * c.eps * c.normals,
            c.zeros,
            c.normals,
            c.centres,
            8 * c.eps,
            c.rho,
            c.delta,
        )

    monkeypatch.setattr(ce, "construction", far)
    assert ce.check_blocking(5) > 0.1
    assert int(ce.active_positives(ce.random_admissible_units(5, 4000, seed=0), 5).max()) >= 2


@budget(60 / 25)
@given(h=st.integers(2, 7), seed=st.integers(0, 10**6), scale=st.floats(1e-3, 1e3))
def test_lemma2_3_hypothesis(h, seed, scale):
    # an arbitrary affine map made <= 0 on the zero samples is positive on <= 1 positive sample
    c = ce.construction(h)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(c.d_in - 1) * scale
    b = -float((c.zeros @ w).max()) - rng.exponential() * scale * 1e-3
    assert int(((c.positives @ w + b) > 0).sum()) <= 1


@pytest.mark.parametrize("h", range(2, 9))
def test_sample_counts(h):
    assert len(ce.make_dataset(h)[0]) == (4 if h == 2 else 2 * h + 1)
    n_cyc = len(ce.make_dataset(h, "cyclic4")[0])
    s = n_cyc - h - 1
    if h > 2:
        assert s * (s - 3) // 2 >= h and (s == 5 or (s - 1) * (s - 4) // 2 < h)


@pytest.mark.parametrize("s", range(5, 10))
def test_cyclic_base_is_neighbourly(s):
    # the trigonometric moment curve gives s(s-3)/2 facets (Gale evenness), all used as hosts
    h = s * (s - 3) // 2
    assert ce.construction(h, "cyclic4").normals.shape == (h, 5)


def test_h2_is_the_four_sample_segment():
    X, y = ce.make_dataset(2)
    assert X.tolist() == [[1, 0.5, 1], [-1, 0.5, 1], [0, 0, 1], [0, 1, 1]]
    assert y.tolist() == [0.5, 0.5, 0, 0]


@pytest.mark.parametrize("h,base", CASES)
def test_invariant_constant_along_paths_inside_each_class(h, base):
    X, y = ce.make_dataset(h, base)
    for p in ce.path_within_positive_class(h, base):
        assert float(ce.loss(p, X, y)) < 1e-27 and ce.invariant(p, X) == tuple(range(h))
    for p in ce.path_within_teacher_class(h, base):
        assert float(ce.loss(p, X, y)) < 1e-27 and ce.invariant(p, X) is None


@pytest.mark.parametrize("h", [2, 3, 4])
def test_permuted_positive_fits_have_all_assignments(h):
    # Z_+ splits into >= h! components, one per assignment units -> positive samples
    X, y = ce.make_dataset(h)
    P = ce.positive_params(h)
    seen = set()
    for perm in itertools.permutations(range(h)):
        q = {
            "layers.0.weight": P["layers.0.weight"][list(perm)],
            "layers.1.weight": P["layers.1.weight"][:, list(perm)],
        }
        assert float(ce.loss(q, X, y)) < 1e-28
        seen.add(ce.invariant(q, X))
    assert seen == set(itertools.permutations(range(h)))
    assert len(seen) == math.factorial(h)


@pytest.mark.parametrize("h", [2, 5])
def test_invariant_is_none_for_degenerate_units(h):
    X, _ = ce.make_dataset(h)
    P = ce.positive_params(h)
    q = {k: t.clone() for k, t in P.items()}
    q["layers.1.weight"][0, 0] = 0.0  # a unit switched off
    assert ce.invariant(q, X) is None
    q = {k: t.clone() for k, t in P.items()}
    q["layers.0.weight"][0] = torch.tensor([0.0] * (X.shape[1] - 1) + [-1.0])  # a dead unit
    assert ce.invariant(q, X) is None


@pytest.mark.parametrize("h", [2, 5])
def test_straight_line_between_the_minimisers_leaves_the_zero_set(h):
    X, y = ce.make_dataset(h)
    T, P = ce.minimisers(h)
    losses = [
        float(ce.loss({k: (1 - s) * T[k] + s * P[k] for k in T}, X, y))
        for s in torch.linspace(0, 1, 21)
    ]
    assert losses[0] == 0 and losses[-1] < 1e-28 and max(losses) > 1e-3


def test_find_minimisers_reports_fits_and_invariants():
    runs = ce.find_minimisers(2, n_starts=3, seed=0, max_iter=200)
    X, _ = ce.make_dataset(2)
    assert len(runs) == 3
    for r in runs:
        assert r["loss"] >= 0 and r["invariant"] == ce.invariant(r["params"], X)
        if r["invariant"] is not None:
            assert bool((r["params"]["layers.1.weight"] > 0).all())


def test_bad_arguments():
    with pytest.raises(ce.IsthmusError):
        ce.construction(1)
    with pytest.raises(ce.IsthmusError):
        ce.construction(3, "cube")
