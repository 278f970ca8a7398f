"""Curvature checked against explicit Hessians: HVPs, Lanczos, Hutchinson and the quadrature."""

from __future__ import annotations

import pytest
import torch
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

from isthmus.curvature import (
    hessian_operator,
    hutchinson_trace,
    lanczos,
    layer_groups,
    quadrature,
    spectral_density,
    top_eigenvalues,
)
from isthmus.errors import IsthmusError
from isthmus.landscape import Quadratic, as_point
from isthmus.models import ModelConfig, build_model
from isthmus.params import flatten, loss_sum, params_of, unflatten


def _net_and_hessian(data, width=6, n=300):
    """A float64 MLP on the first n examples and its explicit Hessian over all trainable tensors."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mlp", depth=3, width=width, input_shape=(40,))).double()
    p = params_of(model)
    keys = [k for k, _ in model.named_parameters()]
    x, y = data.x_train[:n].double(), data.y_train[:n]

    def f(v):
        out = functional_call(model, unflatten(v, p, keys), (x,))
        return loss_sum(out, y, "ce")[0] / n

    H = torch.autograd.functional.hessian(f, flatten(p, keys))
    return model, p, H


def test_hvp_of_a_net_equals_the_explicit_hessian(small_mnist1d):
    model, p, H = _net_and_hessian(small_mnist1d)
    for bs in (None, 64):  # batches weighted by size: the same full-split mean
        op = hessian_operator(model, p, small_mnist1d, examples=300, batch_size=bs)
        v = torch.randn(op.dim, dtype=torch.float64)
        assert torch.allclose(op.matvec(v), H @ v, rtol=1e-8, atol=1e-10)


def test_lanczos_top_eigenvalues_match_the_explicit_spectrum(small_mnist1d):
    model, p, H = _net_and_hessian(small_mnist1d)
    want = torch.linalg.eigvalsh(H).flip(0)[:5]
    op = hessian_operator(model, p, small_mnist1d, examples=300)
    eig = top_eigenvalues(op, 5, tol=1e-8, max_steps=op.dim)
    assert eig.converged
    assert torch.allclose(torch.tensor(eig.values, dtype=torch.float64), want, rtol=1e-6)


def test_hutchinson_trace_is_within_its_standard_error(small_mnist1d):
    model, p, H = _net_and_hessian(small_mnist1d)
    op = hessian_operator(model, p, small_mnist1d, examples=300)
    tr = hutchinson_trace(op, probes=200, seed=1)
    assert abs(tr.estimate - float(H.trace())) <= 4 * tr.stderr
    assert tr.stderr > 0


@budget(0.4)
@given(dim=st.integers(3, 30), seed=st.integers(0, 10_000), steps=st.integers(1, 6))
def test_quadrature_weights_are_squared_first_components(dim, seed, steps):
    """Gauss quadrature from m Lanczos steps is exact for degree < 2m: sum_j w_j theta_j^p equals
    v^T H^p v. Unsquared components (or eigenvalues' wrong parts) fail already at p = 0."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    q = Quadratic(a + a.T)
    op = hessian_operator(q, torch.zeros(dim, dtype=torch.float64))
    v = torch.randn(dim, generator=g, dtype=torch.float64)
    v = v / v.norm()
    m = min(steps, dim)
    theta, w = quadrature(lanczos(op, m, v))
    for power in range(2 * len(theta)):
        hv = v.clone()
        for _ in range(power):
            hv = q.hessian @ hv
        exact = float(v @ hv)
        assert abs(float((w * theta**power).sum()) - exact) <= 1e-8 * max(1.0, abs(exact))


def test_density_moments_estimate_the_spectrum():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(60, 60, generator=g, dtype=torch.float64)
    q = Quadratic(a @ a.T / 60)
    lam = torch.linalg.eigvalsh(q.hessian)
    op = hessian_operator(q, as_point(torch.zeros(60)))
    dens = spectral_density(op, probes=30, steps=20, seed=0)
    nodes = torch.tensor(dens.nodes, dtype=torch.float64)
    weights = torch.tensor(dens.weights, dtype=torch.float64)
    assert torch.allclose(weights.sum(1), torch.ones(30, dtype=torch.float64))
    for power in (1, 2):  # E over probes of v^T H^p v = tr(H^p) / D
        est = float((weights * nodes**power).sum(1).mean())
        assert abs(est - float((lam**power).mean())) <= 0.1 * float((lam**power).mean())
    grid = torch.linspace(float(lam.min()) - 1, float(lam.max()) + 1, 2001, dtype=torch.float64)
    dens_grid = dens.smoothed(grid, sigma=0.05)
    assert abs(float(torch.trapezoid(dens_grid, grid)) - 1.0) < 1e-3  # a probability density


def test_per_layer_blocks_are_diagonal_blocks_of_the_hessian(small_mnist1d):
    model, p, H = _net_and_hessian(small_mnist1d)
    keys = [k for k, _ in model.named_parameters()]
    groups = layer_groups(model, p)
    assert list(groups) == ["layers.0", "layers.1", "layers.2"]
    start = 0
    for members in groups.values():
        size = sum(p[k].numel() for k in members)
        block = H[start : start + size, start : start + size]
        assert members == keys[keys.index(members[0]) : keys.index(members[0]) + len(members)]
        op = hessian_operator(model, p, small_mnist1d, examples=300, keys=members)
        v = torch.randn(size, dtype=torch.float64)
        assert torch.allclose(op.matvec(v), block @ v, rtol=1e-8, atol=1e-10)
        start += size


def test_bad_requests_are_refused(small_mnist1d):
    model, p, _ = _net_and_hessian(small_mnist1d, width=3, n=20)
    with pytest.raises(IsthmusError, match="needs data"):
        hessian_operator(model, p)
    with pytest.raises(IsthmusError, match="not found"):
        hessian_operator(model, p, small_mnist1d, keys=["nope"])
    op = hessian_operator(model, p, small_mnist1d, examples=20)
    with pytest.raises(IsthmusError, match="k must be"):
        top_eigenvalues(op, 0)


@pytest.mark.e2e
def test_the_hessian_command_writes_its_summary(tmp_path, capsys):
    import json

    from isthmus.cli import main

    run = tmp_path / "run"
    assert (
        main(["train", "--data", "digits", "--width", "8", "--epochs", "2", "--out", str(run)]) == 0
    )
    out = tmp_path / "h"
    argv = ["hessian", str(run), "--top", "3", "--trace", "--density", "--per-layer"]
    assert main([*argv, "--examples", "300", "--probes", "10", "--out", str(out)]) == 0
    doc = json.loads((out / "hessian.json").read_text())
    ev = doc["eigenvalues"]
    assert len(ev) == 3 and ev == sorted(ev, reverse=True) and doc["examples"] == 300
    assert doc["converged"] and doc["trace"]["probes"] == 10 and doc["trace"]["stderr"] > 0
    assert len(doc["density"]["nodes"]) == len(doc["density"]["weights"]) == 10
    assert set(doc["per_layer"]) == {"layers.0", "layers.1", "layers.2"}
    # a layer's block is a principal submatrix: its top eigenvalue cannot exceed the whole one's
    assert all(v["top_eigenvalue"] <= ev[0] * (1 + 1e-6) for v in doc["per_layer"].values())
    assert (out / "hessian_density.png").stat().st_size > 10_000
    assert "top 3 eigenvalues" in capsys.readouterr().out
    assert main(["hessian", str(tmp_path / "missing"), "--out", str(out)]) == 2
