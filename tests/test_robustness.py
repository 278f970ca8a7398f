"""Bad input fails with one clear message: sizes with upper bounds, flags with ranges, strict
numbers, and a failure nobody anticipated as one line (the traceback only with --debug)."""

from __future__ import annotations

import pytest

from isthmus.cli import build_parser, main
from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"depth": 100_000}, r"depth must be an integer in \[1, 256\]"),
        ({"width": 10**12}, r"width must be integers in \[1, 65536\]"),
        ({"width": 60_000, "depth": 3, "input_shape": [60_000]}, "weights; at most"),
        ({"bias": "yes"}, "bias must be true or false"),
        ({"depth": True}, "depth must be an integer"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": [0]}, "input_shape"),
        ({"kind": "cnn", "channels": [32, "M", 10**7]}, "channels must list"),
        ({"kind": "cnn", "channels": [8] * 300}, "channels must list at most 256"),
    ],
)
def test_absurd_model_configs_are_refused_naming_the_field(fields, match):
    with pytest.raises(IsthmusError, match=match):
        ModelConfig.from_dict(fields, source="run/config.json")


def test_sane_model_configs_pass():
    ModelConfig.from_dict({"kind": "mlp", "depth": 3, "width": [256, 128]}).validate()
    ModelConfig.from_dict({"kind": "cnn", "input_shape": [3, 32, 32]}).validate()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--seed", "99999999999999999999999", "--out", "x"],
        ["train", "--seed", "-1", "--out", "x"],
        ["connect", "a", "b", "--pivots", "100000000", "--out", "x"],
    ],
)
def test_out_of_range_flags_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert "must be in [" in capsys.readouterr().err


def test_unknown_device_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--device", "tpu", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "unknown device" in capsys.readouterr().err


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(
    monkeypatch, capsys, tmp_path
):
    from isthmus.cli import _common

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(_common, "new_output", boom)
    out = str(tmp_path / "w")
    assert main(["wedges", "--quick", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "unexpected failure: RuntimeError: boom" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "wedges", "--quick", "--out", out])
