"""`curvature.summarize` of a BatchNorm net recomputes the statistics once for the whole Hessian
and all its per-layer blocks, and gets the numbers that recomputing them per block gives."""

from __future__ import annotations

from isthmus import curvature
from isthmus.curvature import hessian_operator, layer_groups, summarize, top_eigenvalues
from isthmus.models import ModelConfig, build_model
from isthmus.params import params_of
from isthmus.train import TrainConfig, train

BN_CNN = ModelConfig(kind="cnn", channels=(4, "M", 4, "M"), batchnorm=True, input_shape=(40,))


def test_bn_statistics_are_recomputed_once_per_summary(small_mnist1d, monkeypatch):
    d = small_mnist1d
    p = train(BN_CNN, d, TrainConfig(epochs=1, batch_size=64), 0, progress=False).params
    model = build_model(BN_CNN)
    calls = []
    real = curvature.recompute_bn
    monkeypatch.setattr(curvature, "recompute_bn", lambda *a, **k: calls.append(1) or real(*a, **k))
    s = summarize(model, p, d, top=2, trace=True, per_layer=True, examples=100, probes=3)
    assert len(calls) == 1 and len(s.per_layer) == len(layer_groups(model, p)) > 2
    for name, keys in layer_groups(model, p).items():  # each block on its own recomputes them
        block = hessian_operator(model, p, d, keys=keys, examples=100)
        assert top_eigenvalues(block, 1).values[0] == s.per_layer[name]["top_eigenvalue"]
    assert len(calls) == 1 + len(s.per_layer)
    whole = top_eigenvalues(hessian_operator(model, p, d, examples=100), 2)
    assert whole.values == s.eigenvalues
    # without BatchNorm nothing is recomputed
    mlp = build_model(ModelConfig(kind="mlp", depth=2, width=8, input_shape=(40,)))
    summarize(mlp, params_of(mlp), d, top=1, per_layer=True, examples=50)
    assert len(calls) == 2 + len(s.per_layer)
