"""A new model family is one class: `units()` (and, for a plain chain, `layer_maps()`).

The model below is written here, not in the library: three bias-free weight matrices with names of
its own, a forward pass of its own. Alignment, dropout stability, noise stability, lines, Bezier
curves and the Theorem 1 path all run on it through its two descriptions; a model that only
describes its units (a residual stream permuted as one group) aligns, and the features that need
a plain chain refuse it with one clear message.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from isthmus.align import align, permute
from isthmus.data import Dataset
from isthmus.errors import IsthmusError
from isthmus.models import Layer, LayerMaps, Stage, TensorSlice, Units, require_chain
from isthmus.params import params_of
from isthmus.paths import BezierPath, FitConfig, connect_dropout, evaluate_path, fit_curve, line
from isthmus.stability import dropout_stability, noise_stability, validate_kept

pytestmark = pytest.mark.usefixtures("one_thread")


class Tower(nn.Module):
    """relu(relu(x W_in^T) W_mid^T) W_out^T, no biases, parameters named by role."""

    def __init__(self, n_in: int, h1: int, h2: int, n_out: int):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(h1, n_in) / n_in**0.5)
        self.w_mid = nn.Parameter(torch.randn(h2, h1) / h1**0.5)
        self.w_out = nn.Parameter(torch.randn(n_out, h2) / h2**0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(x.flatten(1) @ self.w_in.T)
        return torch.relu(h @ self.w_mid.T) @ self.w_out.T

    def units(self) -> Units:
        first = Layer(
            "first", self.w_in.shape[0], (TensorSlice("w_in", 0),), (TensorSlice("w_mid", 1),)
        )
        second = Layer(
            "second", self.w_mid.shape[0], (TensorSlice("w_mid", 0),), (TensorSlice("w_out", 1),)
        )
        return Units((first, second), ("w_out",))

    def layer_maps(self) -> LayerMaps:
        return LayerMaps((Stage("first", "w_in"), Stage("second", "w_mid"), Stage("out", "w_out")))


class Residual(nn.Module):
    """x0 = E x; x_{k+1} = x_k + U_k relu(D_k x_k); f = H x_2: the stream is one unit group."""

    def __init__(self, n_in: int, width: int, inner: int, n_out: int):
        super().__init__()
        self.embed = nn.Linear(n_in, width)
        self.down = nn.ModuleList(nn.Linear(width, inner) for _ in range(2))
        self.up = nn.ModuleList(nn.Linear(inner, width) for _ in range(2))
        self.head = nn.Linear(width, n_out)

    def forward(self, x: Tensor) -> Tensor:
        s = self.embed(x)
        for d, u in zip(self.down, self.up, strict=True):
            s = s + u(torch.relu(d(s)))
        return self.head(s)

    def units(self) -> Units:
        stream = Layer(
            "stream",
            self.embed.out_features,
            (TensorSlice("embed.weight", 0), TensorSlice("embed.bias", 0))
            + tuple(TensorSlice(f"up.{k}.{p}", 0) for k in range(2) for p in ("weight", "bias")),
            tuple(TensorSlice(f"down.{k}.weight", 1) for k in range(2))
            + (TensorSlice("head.weight", 1),),
        )
        inner = tuple(
            Layer(
                f"inner.{k}",
                self.down[k].out_features,
                (TensorSlice(f"down.{k}.weight", 0), TensorSlice(f"down.{k}.bias", 0)),
                (TensorSlice(f"up.{k}.weight", 1),),
            )
            for k in range(2)
        )
        return Units((stream, *inner), ("head.weight", "head.bias"))


def _data(n_in=6, classes=3, n=96, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return Dataset("toy", x[:64], y[:64], x[64:], y[64:], classes, "classification", (n_in,))


def _pair(make):
    torch.manual_seed(0)
    a, b = make(), make()
    return a, params_of(a), params_of(b)


def _out(model, p, x):
    return functional_call(model, p, (x,))


def test_alignment_dropout_stability_and_paths_on_a_new_family():
    data = _data()
    model, pa, pb = _pair(lambda: Tower(6, 8, 6, 3))
    x = data.x_train

    # alignment: B permuted into A's order computes B's function
    res = align(model, pa, pb)
    torch.testing.assert_close(_out(model, res.params, x), _out(model, pb, x), rtol=1e-5, atol=1e-5)
    assert set(res.perm) == {"first", "second"}

    # dropout stability: valid kept sets for both start layers, epsilon as defined
    st = dropout_stability(model, pa, data, draws=8, swaps=8, seed=0)
    assert [c.i for c in st.by_start_layer] == [1, 2]
    for c in st.by_start_layer:
        validate_kept(model.units(), c.i, c.kept)
    assert st.epsilon == pytest.approx(max(c.loss for c in st.by_start_layer) - st.loss)

    # noise stability reads the same layer maps
    ns = noise_stability(model, pa, data, n_examples=16, n_proj=4)
    assert len(ns.layer_cushion) == 3 and ns.layers == ["first", "second"]

    # a line and a Bezier curve: exact endpoints, the curve on the line is the line
    lin = evaluate_path(model, line(pa, pb), data, points=5)
    curve = BezierPath.on_line(pa, pb, 1)
    on = evaluate_path(model, curve, data, points=5)
    assert on.train_loss == pytest.approx(lin.train_loss, rel=1e-5, abs=1e-6)
    fit = fit_curve(model, curve, data, FitConfig(epochs=2, batch_size=32), seed=0)
    fitted = evaluate_path(model, fit.path, data, points=5)
    assert fitted.train_loss[0] == pytest.approx(lin.train_loss[0], rel=1e-6)
    assert fitted.train_loss[-1] == pytest.approx(lin.train_loss[-1], rel=1e-6)


def test_theorem1_path_on_a_new_family():
    data = _data()
    model, pa, pb = _pair(lambda: Tower(6, 8, 6, 3))
    _, res = connect_dropout(model, pa, pb, data, seed=0, points=11)
    assert res.certificate["holds"] and res.certificate["bound_within_theorem"]


def test_a_residual_stream_is_one_unit_group_for_alignment():
    data = _data()
    model, pa, pb = _pair(lambda: Residual(6, 8, 5, 3))
    x = data.x_train
    for method in ("weights", "activations"):
        res = align(model, pa, pb, method=method, data=data)
        torch.testing.assert_close(
            _out(model, res.params, x), _out(model, pb, x), rtol=1e-5, atol=1e-5
        )
    g = torch.Generator().manual_seed(1)
    perm = {la.name: torch.randperm(la.size, generator=g) for la in model.units().layers}
    moved = permute(pa, model.units(), perm)
    torch.testing.assert_close(_out(model, moved, x), _out(model, pa, x), rtol=1e-5, atol=1e-5)
    assert not torch.equal(moved["embed.weight"], pa["embed.weight"])


def test_models_without_layer_maps_get_one_clear_refusal():
    data = _data()
    model, pa, pb = _pair(lambda: Residual(6, 8, 5, 3))
    for run in (
        lambda: dropout_stability(model, pa, data, draws=2),
        lambda: noise_stability(model, pa, data),
        lambda: connect_dropout(model, pa, pb, data),
    ):
        with pytest.raises(IsthmusError, match="needs a plain chain of layers.*layer_maps"):
            run()


def test_layer_maps_must_match_the_units():
    class Mismatched(Tower):
        def layer_maps(self) -> LayerMaps:
            return LayerMaps(
                (Stage("second", "w_in"), Stage("first", "w_mid"), Stage("o", "w_out"))
            )

    with pytest.raises(IsthmusError, match="must match"):
        require_chain(Mismatched(6, 8, 6, 3), "dropout stability")
