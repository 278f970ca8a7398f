"""The wedge model: its geometry, its gradient, and each phenomenon it is meant to show."""

from __future__ import annotations

import math

import pytest
import torch

from isthmus.curvature import hessian_operator, top_eigenvalues
from isthmus.errors import IsthmusError
from isthmus.landscape import as_point, is_landscape
from isthmus.paths import evaluate_path, line
from isthmus.paths.base import PiecewiseLinearPath
from isthmus.paths.neb import NEBConfig, connect_neb
from isthmus.wedges import (
    WedgeConfig,
    WedgeModel,
    descend,
    random_starts,
    random_subspaces,
)

SMALL = WedgeConfig(dim=40, wedge_dim=24, wedges=4)


@pytest.fixture(scope="module")
def wedges():
    return WedgeModel.random(SMALL, seed=0)


def test_geometry_bases_radius_and_distance(wedges):
    assert is_landscape(wedges) and wedges.dim == 40
    for U in wedges.bases:
        assert torch.allclose(U.T @ U, torch.eye(24, dtype=torch.float64), atol=1e-12)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(24, generator=g, dtype=torch.float64)
    on = wedges.bases[2] @ a  # a point on wedge 2
    assert float(wedges.loss(on[None])[0]) < 1e-20 and int(wedges.nearest(on[None])[0]) == 2
    assert math.isclose(float(wedges.radius(on[None])[0]), float(a.norm()), rel_tol=1e-12)
    # moving off it by p across raises the loss to (p / w(r))^2
    perp = torch.randn(40, generator=g, dtype=torch.float64)
    perp -= wedges.bases[2] @ (wedges.bases[2].T @ perp)
    off = on + 0.01 * perp / perp.norm()
    w = wedges.w0 + wedges.alpha * float(a.norm())
    assert math.isclose(float(wedges.scaled_sq(off[None])[0, 2]), (0.01 / w) ** 2, rel_tol=1e-9)


def test_gradient_matches_finite_differences(wedges):
    g = torch.Generator().manual_seed(1)
    for temperature in (0.0, 0.05):
        m = WedgeModel(wedges.bases, wedges.w0, wedges.alpha, temperature)
        x = torch.randn(3, 40, generator=g, dtype=torch.float64).requires_grad_(True)
        assert torch.autograd.gradcheck(m.loss, (x,), eps=1e-6, atol=1e-6)
        # the closed-form gradient that descent uses, against central differences
        x0 = x.detach()
        loss, grad = m.loss_and_grad(x0)
        assert torch.allclose(loss, m.loss(x0), rtol=1e-12)
        h = 1e-6
        for i in range(0, 40, 7):
            e = torch.zeros_like(x0)
            e[:, i] = h
            fd = (m.loss(x0 + e) - m.loss(x0 - e)) / (2 * h)
            assert torch.allclose(grad[:, i], fd, rtol=1e-5, atol=1e-7), i


def test_softmin_is_within_t_log_k_below_the_min(wedges):
    x = random_starts(40, 64, 2.0, seed=3)
    hard = wedges.loss(x)
    for t in (1e-1, 1e-2, 1e-4):
        soft = WedgeModel(wedges.bases, wedges.w0, wedges.alpha, t).loss(x)
        assert (soft <= hard + 1e-12).all()
        assert (soft >= hard - t * math.log(wedges.wedges) - 1e-12).all()


def test_curvature_across_a_wedge_is_two_over_thickness_squared(wedges):
    a = torch.zeros(24, dtype=torch.float64)
    a[0] = 3.0
    on = wedges.bases[0] @ a
    op = hessian_operator(wedges, on)
    eig = top_eigenvalues(op, 1, tol=1e-8, max_steps=40)
    want = float(wedges.curvature_across(torch.tensor(3.0, dtype=torch.float64)))
    assert math.isclose(eig.values[0], want, rel_tol=1e-6)


def test_gradient_descent_from_random_starts_lands_on_wedges(wedges):
    starts = random_starts(40, 64, 3.0, seed=4)
    res = descend(wedges, starts, 0.01, 2000)
    assert not res.diverged.any()
    assert (res.loss < 1e-6 * wedges.loss(starts)).all()
    hit = wedges.nearest(res.x)
    assert len(set(hit.tolist())) == wedges.wedges  # every wedge is reached from some start


def test_the_batched_population_equals_a_loop_over_the_starts(wedges):
    starts = random_starts(40, 6, 3.0, seed=5)
    lrs = torch.tensor([0.001, 0.01, 0.05, 0.001, 0.01, 0.05], dtype=torch.float64)
    pop = descend(wedges, starts, lrs, 200, l2=0.01)
    for i in range(6):
        solo = descend(wedges, starts[i : i + 1], float(lrs[i]), 200, l2=0.01)
        assert torch.allclose(pop.x[i], solo.x[0], rtol=1e-12, atol=1e-14)


def test_larger_steps_end_farther_out_where_curvature_is_lower(wedges):
    starts = random_starts(40, 32, 3.0, seed=6)
    radius, top = [], []
    for lr in (0.005, 0.05, 0.2):
        res = descend(wedges, starts, lr, 2000)
        assert not res.diverged.any()
        r = wedges.radius(res.x)
        radius.append(float(r.mean()))
        # top Hessian eigenvalue at a few end points, through the landscape protocol
        eigs = [
            top_eigenvalues(hessian_operator(wedges, res.x[i]), 1, max_steps=40).values[0]
            for i in range(8)
        ]
        top.append(sum(eigs) / len(eigs))
        # descent cannot settle where the curvature exceeds 2 / lr
        assert max(eigs) <= 2 / lr * 1.05
    assert radius[0] < radius[1] < radius[2]
    assert top[0] > top[1] > top[2]


def test_l2_pulls_solutions_inward(wedges):
    starts = random_starts(40, 64, 3.0, seed=7)
    r0 = wedges.radius(descend(wedges, starts, 0.05, 2000).x).mean()
    r1 = wedges.radius(descend(wedges, starts, 0.05, 2000, l2=0.01).x).mean()
    assert float(r1) < float(r0)


@pytest.mark.slow
def test_subspace_training_succeeds_only_above_d_equal_d_minus_n(wedges):
    starts = random_starts(40, 32, 3.0, seed=8)
    target = 0.01 * wedges.loss(starts)
    rate = {}
    for d in (6, 30):  # D - n = 16
        A = random_subspaces(40, d, 32, seed=9)
        res = descend(wedges, starts, 0.01, 3000, subspace=A)
        rate[d] = float((res.loss < target).double().mean())
    assert rate[6] <= 0.05 and rate[30] >= 0.95


@pytest.mark.slow
def test_lines_between_wedges_cross_high_loss_paths_through_intersections_do_not(wedges):
    assert 2 * wedges.wedge_dim > wedges.dim
    inter = wedges.intersection(0, 1)
    assert inter.shape[1] == 2 * 24 - 40
    g = torch.Generator().manual_seed(10)
    a = wedges.bases[0] @ torch.randn(24, generator=g, dtype=torch.float64)
    b = wedges.bases[1] @ torch.randn(24, generator=g, dtype=torch.float64)
    c = inter @ torch.randn(inter.shape[1], generator=g, dtype=torch.float64)
    c = c * float(a.norm()) / float(c.norm())  # a point on both wedges, at a's radius
    straight = evaluate_path(wedges, line(as_point(a), as_point(b)), points=41)
    assert max(straight.train_loss) > 1.0
    bent = PiecewiseLinearPath([as_point(a), as_point(c), as_point(b)])
    assert max(evaluate_path(wedges, bent, points=41).train_loss) < 1e-20
    cfg = NEBConfig(pivots=7, cycles=3, steps=500, lr=0.01, optimizer="adam", spring=0.1)
    _, res = connect_neb(wedges, as_point(a), as_point(b), cfg=cfg, progress=False)
    assert res.max_loss < 0.1 * max(straight.train_loss)


def test_bad_configs_are_refused():
    with pytest.raises(IsthmusError, match="wedge_dim"):
        WedgeModel.random(WedgeConfig(dim=10, wedge_dim=10))
    with pytest.raises(IsthmusError, match="w0"):
        WedgeModel.random(WedgeConfig(w0=float("nan")))


@pytest.mark.e2e
def test_the_wedges_command_writes_every_experiment(tmp_path, capsys):
    import json

    from isthmus.cli import main

    out = tmp_path / "w"
    assert main(["wedges", "--quick", "--experiment", "a", "b", "d", "--out", str(out)]) == 0
    doc = json.loads((out / "wedges.json").read_text())
    assert set(doc["experiments"]) == {"a", "b", "d"} and doc["config"]["dim"] == 40
    assert doc["experiments"]["a"]["landed"] == 1.0
    m = doc["experiments"]["b"]["max_loss"]
    assert m["intersection"] < 1e-12 < m["autoneb"] < m["line"]
    for name in ("wedge_landing", "wedge_tunnels", "wedge_cut"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    assert "landed on a wedge" in capsys.readouterr().out
    assert main(["wedges", "--quick", "--alpha", "-1", "--out", str(tmp_path / "x")]) == 2


def test_landing_radii_get_readable_ticks():
    """Radii within a few percent get a linear axis with a few plain ticks (a log axis labelled
    them 2.985x10^0 and overlapping); radii over decades a log axis labelled at decades only."""
    import matplotlib.pyplot as plt

    from isthmus.plot import _spread_xaxis

    fig, (near, far) = plt.subplots(1, 2)
    near.scatter([2.98, 3.0, 3.01], [1, 2, 3])
    _spread_xaxis(near, [2.98, 3.0, 3.01])
    far.scatter([0.1, 5.0, 100.0], [1, 2, 3])
    _spread_xaxis(far, [0.1, 5.0, 100.0])
    fig.canvas.draw()
    assert near.get_xscale() == "linear" and far.get_xscale() == "log"

    def shown(ax, minor: bool = False) -> list[str]:
        lo, hi = ax.get_xlim()
        ticks = ax.xaxis.get_minor_ticks() if minor else ax.xaxis.get_major_ticks()
        return [
            t.label1.get_text() for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_text()
        ]

    labels = shown(near)
    assert 2 <= len(labels) <= 5 and all("10^" not in s and "times" not in s for s in labels)
    assert shown(far, minor=True) == [] and 2 <= len(shown(far)) <= 6
    plt.close(fig)
