"""A line or simplex trained from scratch (Wortsman et al. 2021): every vertex learns, the cosine
term keeps the vertices apart, the subspace's samples have low loss, same seed same numbers."""

from __future__ import annotations

import pytest
import torch

from isthmus.data import load
from isthmus.errors import IsthmusError
from isthmus.io import load_checkpoint
from isthmus.models import ModelConfig, build_model
from isthmus.params import evaluate, flatten
from isthmus.paths.fit import FitConfig
from isthmus.subspace import mean_squared_cosine, train_subspace
from isthmus.train import TrainConfig, initial_params, train

MLP = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(20,))
FIT = FitConfig(epochs=10, optimizer="adam", lr=0.01, samples=1, batch_size=64)


@pytest.fixture(scope="module")
def task():
    return load("gaussians").subset(512, 256, seed=0)


@pytest.fixture(scope="module")
def lines(task):
    """Lines (k = 1) trained with and without the cosine term, same seed."""
    return {
        beta: train_subspace(MLP, task, 1, FIT, cosine=beta, seed=0, progress=False)[0]
        for beta in (1.0, 0.0)
    }


def _flat(cx) -> torch.Tensor:
    keys = [n for n, _ in build_model(MLP).named_parameters()]
    return torch.stack([flatten(v, keys) for v in cx.vertices])


def _loss(points, task) -> torch.Tensor:
    return evaluate(build_model(MLP), points, task.x_train, task.y_train).loss


def test_every_vertex_moves_from_its_own_initialisation(lines):
    cx = lines[1.0]
    assert cx.fixed == [] and cx.simplices == [(0, 1)] and cx.cosine == 1.0
    for i, v in enumerate(cx.vertices):
        init = initial_params(MLP, 0.0, i)
        assert all(v[k].shape == init[k].shape for k in init)
        moved = (flatten(v) - flatten(init)).norm() / flatten(init).norm()
        assert moved > 0.05, (i, float(moved))


def test_the_cosine_term_keeps_the_vertices_apart(lines):
    apart, together = (float(mean_squared_cosine(_flat(lines[b]))) for b in (1.0, 0.0))
    assert apart < 0.1 and together > 0.2 and together > 3 * apart, (apart, together)


def test_samples_of_the_line_have_low_loss(lines, task):
    """As low as one net trained with the same budget, far below the initial loss."""
    solo = train(MLP, task, TrainConfig(epochs=10, batch_size=64), seed=0, progress=False)
    solo_loss = float(_loss([solo.params], task)[0])
    start = float(_loss([initial_params(MLP, 0.0, 0)], task)[0])
    samples = _loss(lines[1.0].sample(64, torch.Generator().manual_seed(0)), task)
    assert float(samples.max()) <= solo_loss + 0.25, (float(samples.max()), solo_loss)
    assert float(samples.max()) <= 0.6 * start


def test_a_simplex_from_scratch_and_same_seed_same_numbers(task):
    cfg = FitConfig(epochs=2, optimizer="adam", lr=0.01, batch_size=128)
    cx, fit = train_subspace(MLP, task, 2, cfg, seed=5, progress=False)
    again, _ = train_subspace(MLP, task, 2, cfg, seed=5, progress=False)
    other, _ = train_subspace(MLP, task, 2, cfg, seed=6, progress=False)
    assert fit.path is cx and [h["epoch"] for h in fit.history] == [1, 2]
    assert len(cx.vertices) == 3 and cx.simplices == [(0, 1, 2)] and cx.dimension == 2
    for v, w in zip(cx.vertices, again.vertices, strict=True):
        assert all(torch.equal(v[k], w[k]) for k in v)
    assert not torch.equal(flatten(cx.vertices[0]), flatten(other.vertices[0]))


def test_an_interrupted_fit_resumes_to_the_same_subspace(task, tmp_path, monkeypatch):
    import isthmus.subspace.scratch as mod

    cfg = FitConfig(epochs=3, optimizer="adam", lr=0.01, batch_size=128, samples=1)
    full, _ = train_subspace(MLP, task, 1, cfg, seed=2, progress=False)
    real = mod.fit_family
    monkeypatch.setattr(mod, "fit_family", lambda *a, **kw: real(*a, **kw, max_epochs=1))
    train_subspace(MLP, task, 1, cfg, seed=2, progress=False, checkpoint=tmp_path)  # 1 of 3 epochs
    monkeypatch.setattr(mod, "fit_family", real)
    assert load_checkpoint(tmp_path / "curve.safetensors")[1]["epoch"] == 1
    with pytest.raises(IsthmusError, match="another curve"):  # resume reads that checkpoint
        train_subspace(MLP, task, 1, cfg, seed=3, progress=False, checkpoint=tmp_path, resume=True)
    with pytest.raises(IsthmusError, match="another subspace from scratch"):  # other cosine
        train_subspace(MLP, task, 1, cfg, cosine=0.5, seed=2, checkpoint=tmp_path, resume=True)
    with pytest.raises(IsthmusError, match="no subspace from scratch checkpoint"):
        train_subspace(MLP, task, 1, cfg, seed=2, checkpoint=tmp_path / "new", resume=True)
    resumed, _ = train_subspace(
        MLP, task, 1, cfg, seed=2, progress=False, checkpoint=tmp_path, resume=True
    )
    for v, w in zip(full.vertices, resumed.vertices, strict=True):
        assert all(torch.equal(v[k], w[k]) for k in v)


def test_a_dimension_below_one_is_refused(task):
    with pytest.raises(IsthmusError, match="k"):
        train_subspace(MLP, task, 0, FIT)
