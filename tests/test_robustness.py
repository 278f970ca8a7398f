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
    err = capsys.readouterr().err
    assert "must be >= 0" in err or "must be <=" in err


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


def test_output_folders_are_claimed_safely(tmp_path):
    from isthmus.io import claim_output, release_output

    (tmp_path / "f").write_text("x")
    with pytest.raises(IsthmusError, match="is a file"):
        claim_output(tmp_path / "f")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(IsthmusError, match="input"):
        claim_output(run / "sub", [run])
    with pytest.raises(IsthmusError, match="input"):
        claim_output(run, [run])
    out = claim_output(tmp_path / "new" / "deeper")  # parents created
    (out / "result.json").write_text("{}")
    release_output()
    with pytest.raises(IsthmusError, match="not empty; pass --resume"):
        claim_output(out)
    for kw in ({"resume": True}, {"overwrite": True}, {"adds": True}):
        assert claim_output(out, **kw) == out
        release_output()
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    import os

    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(IsthmusError, match="cannot write there"):
            claim_output(ro / "x")


def test_a_second_writer_fails_at_once_and_a_killed_writer_releases_its_folder(tmp_path):
    import signal
    import subprocess
    import sys

    from isthmus.io import claim_output, release_output

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from isthmus.io import claim_output; "
            f"claim_output({str(out)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IsthmusError, match="another isthmus process is writing there"):
            claim_output(out, resume=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert claim_output(out, resume=True) == out  # the dead process's lock is gone
    release_output()


def test_a_surface_refuses_a_path_between_other_nets():
    import torch

    from isthmus.models import build_model
    from isthmus.params import params_of
    from isthmus.paths import BezierPath
    from isthmus.surface import slice_through

    cfg = ModelConfig(kind="mlp", depth=2, width=4, input_shape=(5,), num_classes=3)
    a, b, c = (params_of(build_model(cfg)) for _ in range(3))
    path = BezierPath.on_line(a, b)
    assert slice_through([a, b], path=path) is not None
    with pytest.raises(IsthmusError, match="does not join A and B: its end differs from B"):
        slice_through([a, c], path=path)
    b2 = {k: v + (1e-7 if k.endswith("bias") else 0) for k, v in b.items()}
    with pytest.raises(IsthmusError, match="does not join"):
        slice_through([a, b2], path=path)
    assert torch.is_tensor(a[next(iter(a))])
