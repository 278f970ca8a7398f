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


# ----------------------------------------------------------------------------- resume states

TINY = ["train", "--data", "digits", "--depth", "2", "--width", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("states")
    for s in (0, 1, 2):
        assert main([*TINY, "--seed", str(s), "--out", str(root / f"r{s}")]) == 0
    return root


def _refused_resume(argv, capsys, *names: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected failure" not in err and "error:" in err, err
    for n in names:
        assert n in err, (n, err)


def test_hand_edited_autoneb_states_are_refused(tiny_runs, tmp_path, capsys):
    import torch

    from isthmus.io import load_checkpoint, save_checkpoint

    r0, r1, out = str(tiny_runs / "r0"), str(tiny_runs / "r1"), tmp_path / "neb"
    argv = ["connect", r0, r1, "--method", "neb", "--cycles", "2", "--epochs", "2"]
    argv += ["--points", "3", "--out", str(out)]
    assert main(argv) == 0
    ckpt = out / ".checkpoint" / "neb.safetensors"
    tensors, state = load_checkpoint(ckpt)
    assert main([*argv, "--resume"]) == 0  # the untouched state resumes (a control)
    x = tensors["x"]
    nan_x = x.clone()
    nan_x[1, 0] = float("nan")
    moved = x.clone()
    moved[0, 0] += 1.0
    cases = [
        ({"cycle": None}, {}, "field 'cycle'"),
        ({"cycle": -1}, {}, "field 'cycle'"),
        ({"cycle": 10**9}, {}, "field 'cycle'"),
        ({"cycle": "2"}, {}, "field 'cycle'"),
        ({"cycle": True}, {}, "field 'cycle'"),
        ({"inserted": [-1]}, {}, "field 'inserted'"),
        ({"inserted": None}, {}, "field 'inserted'"),
        ({"history": "x"}, {}, "field 'history'"),
        ({"history": [{"cycle": 1}]}, {}, "field 'history'"),
        ({"history": state["history"] * 3}, {}, "field 'history'"),
        ({}, {"x": None}, "tensor 'x'"),
        ({}, {"rng": None}, "tensor 'rng'"),
        ({}, {"x": nan_x}, "tensor 'x'"),
        ({}, {"x": moved}, "tensor 'x'"),
        ({}, {"x": x[:, :5]}, "tensor 'x'"),
        ({}, {"x": x.double()}, "tensor 'x'"),
        ({}, {"x": torch.cat([x] * 20)}, "tensor 'x'"),
        ({}, {"rng": tensors["rng"][:7]}, "tensor 'rng'"),
        ({"meta": None}, {}, "written for another NEB"),
    ]
    for fields, tens, named in cases:
        s = {k: v for k, v in {**state, **fields}.items() if v is not None}
        t = {k: v for k, v in {**tensors, **tens}.items() if v is not None}
        save_checkpoint(ckpt, t, s)
        _refused_resume([*argv, "--resume"], capsys, "neb.safetensors", named)


def test_hand_edited_tree_states_are_refused(tiny_runs, tmp_path, capsys):
    import json

    runs = [str(tiny_runs / f"r{s}") for s in (0, 1, 2)]
    out = tmp_path / "tree"
    argv = ["tree", *runs, "--method", "linear", "--points", "3", "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads((out / "tree.json").read_text())
    pair = doc["pairs"]["0-1"]
    cases = [
        ({"pairs": None}, "field 'pairs'"),
        ({"pairs": [pair]}, "field 'pairs'"),
        ({"pairs": {"0-5": pair}}, "'0-5'"),
        ({"pairs": {"1-0": pair}}, "'1-0'"),
        ({"pairs": {"-1-2": pair}}, "'-1-2'"),
        ({"pairs": {"00-1": pair}}, "'00-1'"),
        ({"pairs": {"0-1": {"max_loss": 1.0}}}, "pairs['0-1']"),
        ({"pairs": {"0-1": {**pair, "barrier": "x"}}}, "pairs['0-1'].barrier"),
        ({"pairs": {"0-1": {**pair, "max_loss": True}}}, "pairs['0-1'].max_loss"),
        ({"settings": None}, "written for another tree"),
        ({"settings": {**doc["settings"], "points": -3}}, "written for another tree"),
        ({"inputs": None}, "field 'inputs'"),
    ]
    for fields, named in cases:
        bad = {k: v for k, v in {**doc, **fields}.items() if v is not None}
        (out / "tree.json").write_text(json.dumps(bad))
        _refused_resume([*argv, "--resume"], capsys, "tree.json", named)
    partial = {**doc, "pairs": {"0-2": doc["pairs"]["0-2"]}, "done": False}
    (out / "tree.json").write_text(json.dumps(partial))
    assert main([*argv, "--resume"]) == 0  # a valid partial state resumes to the same pairs
    assert json.loads((out / "tree.json").read_text())["pairs"] == doc["pairs"]
