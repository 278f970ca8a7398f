"""A simplex grown from one solution vertex by vertex (Benton et al.'s SPRO): the solution and every
earlier vertex stay bit-identical through later stages, the simplex has volume and low loss (a toy
valley with known flat directions, a tiny net), the start of a new vertex, seeds and resume."""

from __future__ import annotations

import pytest
import torch

from isthmus.data import load
from isthmus.errors import IsthmusError
from isthmus.landscape import Quadratic, as_point
from isthmus.models import ModelConfig, build_model
from isthmus.params import evaluate, flatten
from isthmus.paths.fit import FitConfig
from isthmus.subspace import SimplicialComplex, grow_simplex, log_volume
from isthmus.subspace.grow import centroid, initial_vertex
from isthmus.train import TrainConfig, train

# a valley: flat in the first 3 coordinates, steep (curvature 1) in the last 2
VALLEY = Quadratic(torch.diag(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)))
TOY = FitConfig(epochs=150, lr=0.05, samples=8)
MLP = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(20,))


def _recording(monkeypatch):
    """Wrap grow's fit_family: record every stage's family on entry and its fitted family."""
    import isthmus.subspace.grow as mod

    real, stages = mod.fit_family, []

    def fit(target, family, *a, **kw):
        given = [{k: v.clone() for k, v in c.items()} for c in family.controls()]
        out = real(target, family, *a, **kw)
        stages.append((family, given, out.path))
        return out

    monkeypatch.setattr(mod, "fit_family", fit)
    return stages


def _check_stages(stages, solution) -> None:
    for j, (family, given, fitted) in enumerate(stages, 1):
        assert isinstance(family, SimplicialComplex)
        assert family.fixed == list(range(j)) and family.simplices == [tuple(range(j + 1))]
        out = fitted.controls()
        for i in range(j):  # vertices 0..j-1: bit-identical before and after stage j
            assert all(torch.equal(out[i][k], given[i][k]) for k in given[i]), (j, i)
        assert not torch.equal(flatten(out[j]), flatten(given[j]))  # the new vertex trained
        if j > 1:  # the earlier vertices are the previous stage's result, untouched
            prev = stages[j - 2][2].controls()
            assert all(torch.equal(prev[i][k], out[i][k]) for i in range(j) for k in out[i])
        assert all(torch.equal(out[0][k], solution[k]) for k in solution)


def test_on_a_valley_the_grown_simplex_lies_flat_with_volume(monkeypatch):
    stages = _recording(monkeypatch)
    solution = as_point([0.3, -0.2, 0.1, 0.0, 0.0])  # on the valley floor (loss 0)
    cx, fits = grow_simplex(VALLEY, solution, 3, cfg=TOY, volume=0.01, init_scale=1.0, seed=0)
    _check_stages(stages, solution)
    assert len(stages) == 3 and cx.dimension == 3 and cx.fixed == [0]
    assert [len(f.history) for f in fits] == [TOY.epochs] * 3
    assert all(f.path is st[2] for f, st in zip(fits, stages, strict=True))
    X = torch.stack([v["x"] for v in cx.vertices])
    assert torch.isfinite(log_volume(X)) and float(log_volume(X)) > -5
    samples = VALLEY.loss(cx.sample(256, torch.Generator().manual_seed(0))["x"])
    assert float(samples.max()) < 1e-3  # inside the valley
    assert float(X[:, 3:].abs().max()) < 0.05  # vertices moved out of the steep directions
    # without the volume term the same growth keeps a smaller simplex
    flat, _ = grow_simplex(VALLEY, solution, 3, cfg=TOY, volume=0.0, init_scale=1.0, seed=0)
    Y = torch.stack([v["x"] for v in flat.vertices])
    assert float(log_volume(Y)) < float(log_volume(X))


def test_a_new_vertex_starts_near_the_centroid_by_a_relative_offset():
    cfg = ModelConfig(kind="mlp", depth=3, width=8, input_shape=(20,))
    vs = [{k: v.double() for k, v in build_model(cfg).state_dict().items()} for _ in range(2)]
    c = centroid(vs)
    v = initial_vertex(vs, 2, 0.1, seed=0)
    for k in c:
        d = v[k] - c[k]
        if c[k].dim() <= 1:  # biases: no offset (filter normalisation)
            assert torch.equal(d, torch.zeros_like(d))
        else:  # every filter is offset by 0.1 of its norm
            assert torch.allclose(d.norm(dim=1), 0.1 * c[k].norm(dim=1), rtol=1e-6)
    assert not torch.equal(flatten(v), flatten(initial_vertex(vs, 2, 0.1, seed=1)))
    p = initial_vertex([as_point([1.0, 2.0]), as_point([3.0, 2.0])], 2, 0.5, seed=0)
    assert float((p["x"] - torch.tensor([2.0, 2.0], dtype=torch.float64)).norm()) == pytest.approx(
        0.5
    )


@pytest.fixture(scope="module")
def net():
    d = load("gaussians").subset(512, 256, seed=0)
    run = train(MLP, d, TrainConfig(epochs=10, batch_size=64), seed=0, progress=False)
    return build_model(MLP), run.params, d


def test_a_simplex_grown_from_a_net_keeps_it_and_has_low_loss(net, monkeypatch):
    model, solution, d = net
    stages = _recording(monkeypatch)
    cfg = FitConfig(epochs=3, batch_size=64)
    cx, _ = grow_simplex(model, solution, 2, d, cfg, volume=1e-2, seed=0, progress=False)
    _check_stages(stages, solution)
    keys = [n for n, _ in model.named_parameters()]
    X = torch.stack([flatten(v, keys) for v in cx.vertices])
    assert torch.isfinite(log_volume(X))
    own = float(evaluate(model, [solution], d.x_train, d.y_train).loss[0])
    samples = evaluate(model, cx.sample(64, torch.Generator().manual_seed(0)), d.x_train, d.y_train)
    assert float(samples.loss.max()) <= own + 0.1, (float(samples.loss.max()), own)
    again, _ = grow_simplex(model, solution, 2, d, cfg, volume=1e-2, seed=0, progress=False)
    other, _ = grow_simplex(model, solution, 2, d, cfg, volume=1e-2, seed=1, progress=False)
    for v, w in zip(cx.vertices, again.vertices, strict=True):
        assert all(torch.equal(v[k], w[k]) for k in v)
    assert not torch.equal(flatten(cx.vertices[2]), flatten(other.vertices[2]))


def test_an_interrupted_growth_resumes_to_the_same_simplex(net, tmp_path, monkeypatch):
    import isthmus.subspace.grow as mod

    model, solution, d = net
    cfg = FitConfig(epochs=3, batch_size=128)
    kw = dict(volume=1e-2, seed=4, progress=False)
    full, fits = grow_simplex(model, solution, 3, d, cfg, **kw)
    real, calls = mod.fit_family, []

    def dies_in_stage_two(*a, **k):  # stage 1 completes, stage 2 stops after 1 epoch
        calls.append(1)
        if len(calls) == 2:
            real(*a, **k, max_epochs=1)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mod, "fit_family", dies_in_stage_two)
    with pytest.raises(KeyboardInterrupt):
        grow_simplex(model, solution, 3, d, cfg, checkpoint=tmp_path, **kw)
    monkeypatch.setattr(mod, "fit_family", real)
    assert (tmp_path / "vertex2" / "curve.safetensors").exists()
    assert not (tmp_path / "vertex3").exists()
    resumed, rfits = grow_simplex(
        model, solution, 3, d, cfg, checkpoint=tmp_path, resume=True, **kw
    )
    assert [f.history for f in rfits] == [f.history for f in fits]
    for v, w in zip(full.vertices, resumed.vertices, strict=True):
        assert all(torch.equal(v[k], w[k]) for k in v)
    with pytest.raises(IsthmusError, match="another curve"):  # a stage checkpoint of another seed
        grow_simplex(model, solution, 3, d, cfg, checkpoint=tmp_path, resume=True, volume=1e-2)
    with pytest.raises(IsthmusError, match="another grown simplex"):  # other volume weight
        grow_simplex(model, solution, 3, d, cfg, checkpoint=tmp_path, resume=True, seed=4)
    with pytest.raises(IsthmusError, match="no grown simplex checkpoint"):
        grow_simplex(model, solution, 3, d, cfg, checkpoint=tmp_path / "new", resume=True, **kw)


def test_bad_arguments_are_refused(net):
    model, solution, d = net
    with pytest.raises(IsthmusError, match="k"):
        grow_simplex(model, solution, 0, d)
    with pytest.raises(IsthmusError, match="init_scale"):
        grow_simplex(model, solution, 1, d, init_scale=0.0)
