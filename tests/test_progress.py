"""The progress convention: a line per stage and a bar per loop when asked (or on a terminal),
nothing otherwise (logs and tests stay clean)."""

from __future__ import annotations

import torch

from isthmus.data import Dataset
from isthmus.models import ModelConfig, build_model
from isthmus.params import params_of
from isthmus.paths import connect
from isthmus.progress import shown, stage


def _pair():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g)
    data = Dataset("t", x[:32], y[:32], x[32:], y[32:], 3, "classification", (6,))
    cfg = ModelConfig(kind="mlp", depth=2, width=8, input_shape=(6,), num_classes=3)
    torch.manual_seed(0)
    return build_model(cfg), params_of(build_model(cfg)), params_of(build_model(cfg)), data


def test_stage_follows_the_convention(capsys):
    stage("fitting", progress=True)
    stage("hidden", progress=False)
    stage("not a terminal", progress=None)  # pytest captures stderr: not a terminal
    err = capsys.readouterr().err
    assert "isthmus: fitting" in err and "hidden" not in err and "terminal" not in err
    assert shown(True) and not shown(False) and not shown(None)


def test_connect_shows_stages_and_bars_only_when_asked(capsys):
    model, a, b, data = _pair()
    quiet = connect(model, a, b, data, "linear", points=5)
    assert capsys.readouterr().err == ""
    loud = connect(model, a, b, data, "linear", points=5, progress=True)
    err = capsys.readouterr().err
    assert "isthmus: straight line: 5 points" in err and "evaluate linear" in err
    assert loud.result.train_loss == quiet.result.train_loss  # progress changes no number
