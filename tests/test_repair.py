"""REPAIR: endpoints untouched, target statistics met at t = 0.5, clear refusals; the chain
features refuse residual nets and transformers with the reason."""

from __future__ import annotations

import pytest
import torch

from isthmus.data import Dataset
from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig, build_model
from isthmus.params import params_of
from isthmus.paths import connect_dropout, evaluate_path, line
from isthmus.repair import connect_repaired, repair, repaired_line, statistics
from isthmus.stability import dropout_stability, noise_stability

CONFIGS = {
    "mlp": ModelConfig(kind="mlp", depth=3, width=16, input_shape=(12,), num_classes=3),
    "resnet": ModelConfig(kind="resnet", depth=1, width=1, input_shape=(12,), num_classes=3),
    "resnet-ln": ModelConfig(
        kind="resnet", depth=1, width=1, layernorm=True, input_shape=(12,), num_classes=3
    ),
    "transformer": ModelConfig(
        kind="transformer", depth=2, width=8, heads=2, patch=3, input_shape=(12,), num_classes=3
    ),
}


def _pair(kind: str):
    torch.manual_seed(0)
    model = build_model(CONFIGS[kind]).eval()
    a = params_of(model)
    torch.manual_seed(1)
    b = params_of(build_model(CONFIGS[kind]))
    return model, a, b


def _x(n: int = 200) -> torch.Tensor:
    return torch.randn(n, 12, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_repair_leaves_the_endpoints_unchanged(kind):
    model, a, b = _pair(kind)
    x = _x()
    for t, end in ((0.0, a), (1.0, b)):
        fixed = repair(model, a, b, t, x)
        assert all(torch.equal(fixed[k], end[k]) for k in end), (kind, t)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_repair_meets_the_interpolated_statistics_at_the_midpoint(kind):
    model, a, b = _pair(kind)
    x = _x()
    sa, sb = statistics(model, a, x), statistics(model, b, x)
    target = {k: ((sa[k][0] + sb[k][0]) / 2, (sa[k][1] + sb[k][1]) / 2) for k in sa}
    plain = statistics(model, line(a, b).point(0.5), x)
    # the plain midpoint misses the targets (variance collapse), so the check below has teeth
    assert max(float((plain[k][1] - target[k][1]).abs().max()) for k in sa) > 1e-2
    fixed = statistics(model, repair(model, a, b, 0.5, x), x)
    for k in sa:
        for got, want in zip(fixed[k], target[k], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_repaired_line_holds_the_repaired_nets_at_its_knots():
    model, a, b = _pair("resnet-ln")
    x = _x()
    path = repaired_line(model, a, b, x, points=5)
    assert path.knots() == [0.0, 0.25, 0.5, 0.75, 1.0]
    mid = repair(model, a, b, 0.5, x)
    assert all(torch.equal(path.point(0.5)[k], mid[k]) for k in mid)
    assert all(torch.equal(path.point(0.0)[k], a[k]) for k in a)


def test_connect_repaired_reports_both_lines():
    model, a, b = _pair("transformer")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 12, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    data = Dataset("toy", x[:64], y[:64], x[64:], y[64:], 3, "classification", (12,))
    con = connect_repaired(model, a, b, data, points=5, n_examples=32)
    plain = evaluate_path(model, line(a, b), data, points=5)
    assert con.line.train_loss == pytest.approx(plain.train_loss)
    assert con.result.train_loss[0] == pytest.approx(plain.train_loss[0])
    assert con.result.train_loss[-1] == pytest.approx(plain.train_loss[-1])
    assert con.result.extra["repair"] == {"n_examples": 32}


def test_repair_refuses_batchnorm_and_missing_biases():
    cfg = ModelConfig(kind="resnet", depth=1, width=1, batchnorm=True, input_shape=(12,))
    model = build_model(cfg).eval()
    p = params_of(model)
    with pytest.raises(IsthmusError, match="BatchNorm policy"):
        repair(model, p, p, 0.5, _x())
    model = build_model(ModelConfig(kind="mlp", depth=2, width=4, bias=False, input_shape=(12,)))
    p = params_of(model)
    with pytest.raises(IsthmusError, match="has none"):
        repair(model, p, p, 0.5, _x())
    with pytest.raises(IsthmusError, match=r"t must be in \[0, 1\]"):
        repair(*_pair("mlp"), 1.5, _x())


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(kind="resnet", depth=1, width=1, batchnorm=True, input_shape=(12,)),
        ModelConfig(kind="transformer", depth=1, width=8, heads=2, patch=3, input_shape=(12,)),
    ],
)
def test_chain_features_refuse_residual_nets_with_the_reason(cfg):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 12, generator=g)
    y = (x[:, 0] > 0).long()
    data = Dataset("toy", x[:32], y[:32], x[32:], y[32:], 10, "classification", (12,))
    model = build_model(cfg)
    p = params_of(model)
    for run in (
        lambda: dropout_stability(model, p, data, draws=2),
        lambda: noise_stability(model, p, data),
        lambda: connect_dropout(model, p, p, data),
    ):
        with pytest.raises(IsthmusError, match="needs a plain chain of layers: its theorems"):
            run()


@pytest.mark.e2e
def test_cli_connect_repair(tmp_path, small_mnist1d, capsys):
    from isthmus.cli import main
    from isthmus.io import read_json
    from isthmus.train import TrainConfig, train_population

    cfg = ModelConfig(kind="resnet", depth=1, width=1, layernorm=True, input_shape=(40,))
    spec = {"name": "mnist1d", "root": None, "seed": 0}
    train_population(
        cfg, small_mnist1d, TrainConfig(epochs=1), [0, 1], out=tmp_path / "r", data_spec=spec,
        progress=False,
    )  # fmt: skip
    runs = [str(tmp_path / "r/0"), str(tmp_path / "r/1")]
    out = tmp_path / "c"
    argv = ["connect", *runs, "--method", "linear", "--points", "5", "--device", "cpu"]
    assert main([*argv, "--repair", "--out", str(out)]) != 0  # needs --align
    assert "add --align" in capsys.readouterr().err
    assert main([*argv, "--align", "weights", "--repair", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "linear: barrier" in printed and "linear + REPAIR: barrier" in printed
    doc = read_json(out / "path.json")
    assert doc["align"] == "weights" and doc["repair"]["n_examples"] == 1000
    assert doc["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert doc["method"] == "chain" and "linear" in doc  # the repaired nets as a chain
