import json

import pytest
import torch

from isthmus.errors import IsthmusError
from isthmus.io import import_state_dict, load_run, run_config, save_run
from isthmus.models import ModelConfig, build_model
from isthmus.params import params_of

CFG = ModelConfig(kind="cnn", channels=(3, "M"), input_shape=(1, 10), batchnorm=True, num_classes=4)


def _save(tmp_path):
    p = params_of(build_model(CFG))
    cfg = run_config(CFG, {"name": "mnist1d", "root": None, "seed": 0}, {}, 0)
    return save_run(tmp_path / "run", p, cfg, {"train_loss": 1.0}), p


def test_checkpoint_round_trip_is_exact(tmp_path):
    path, p = _save(tmp_path)
    run = load_run(path)
    assert run.params.keys() == p.keys()
    assert all(torch.equal(run.params[k], p[k]) for k in p)
    assert all(torch.equal(run.model.state_dict()[k], p[k]) for k in p)
    assert run.model_config == CFG and run.metrics == {"train_loss": 1.0}
    assert not list(path.glob("*.tmp"))  # atomic writes leave no temp files


def test_corrupt_weights_are_a_clear_error(tmp_path):
    path, _ = _save(tmp_path)
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(IsthmusError, match="model.safetensors"):
        load_run(path)


def test_mismatched_weights_are_a_clear_error(tmp_path):
    path, _ = _save(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["channels"] = [5, "M"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IsthmusError, match="shape"):
        load_run(path)


def test_bad_config_files(tmp_path):
    path, _ = _save(tmp_path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(IsthmusError, match="config.json: not valid JSON"):
        load_run(path)
    (path / "config.json").write_text(json.dumps({"model": {"kind": "mlp"}}))
    with pytest.raises(IsthmusError, match="missing field 'data'"):
        load_run(path)
    with pytest.raises(IsthmusError, match="not a run directory"):
        load_run(tmp_path / "nowhere")


def test_import_state_dict_is_weights_only(tmp_path):
    sd = build_model(CFG).state_dict()
    torch.save(sd, tmp_path / "sd.pt")
    got = import_state_dict(tmp_path / "sd.pt")
    assert all(torch.equal(got[k], sd[k]) for k in sd)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(IsthmusError, match="weights-only"):
        import_state_dict(tmp_path / "evil.pt")


def test_same_settings_is_exact_except_for_named_round_off():
    from isthmus.io import same_settings

    old = {"grid": 3, "names": ["a", "b"], "ranges": [[0.1, 2.0]], "seed": 0}
    assert same_settings(old, {**old, "names": ("a", "b")})  # a JSON round trip: tuple == list
    near = {**old, "ranges": [[0.1 * (1 + 1e-12), 2.0]]}
    assert not same_settings(old, near)
    assert same_settings(old, near, approx=("ranges",))
    assert not same_settings(old, {**old, "ranges": [[0.2, 2.0]]}, approx=("ranges",))
    assert not same_settings(old, {**old, "ranges": [[0.1, 2.0, 3.0]]}, approx=("ranges",))
    assert not same_settings(old, {**old, "seed": 1}, approx=("ranges",))
    assert not same_settings({"grid": 3}, old)


def test_one_architecture_check_names_both_runs_and_the_fields(tmp_path):
    from isthmus.io import check_same_architecture, load_runs

    path, _ = _save(tmp_path)
    wide = CFG.__class__(**{**CFG.__dict__, "channels": (5, "M")})
    p = params_of(build_model(wide))
    other = save_run(tmp_path / "wide", p, run_config(wide, {"name": "mnist1d"}, {}, 0))
    same = save_run(tmp_path / "same", params_of(build_model(CFG)), run_config(CFG, {}, {}, 1))
    assert [r.path for r in load_runs([path, same])] == [path, same]
    with pytest.raises(IsthmusError, match="different architectures") as e:
        load_runs([path, same, other])
    assert (
        str(path) in str(e.value)
        and str(other) in str(e.value)
        and "model.channels" in str(e.value)
    )
    with pytest.raises(IsthmusError, match="x and y have different"):
        check_same_architecture([load_run(path), load_run(other)], ["x", "y"])


def test_json_is_strict_non_finite_numbers_become_null_with_the_reason(tmp_path):
    import math

    from isthmus.io import read_json, write_json

    f = tmp_path / "m.json"
    write_json(
        f,
        {
            "loss": float("nan"),
            "acc": 0.5,
            "curve": [1.0, float("inf"), torch.tensor(-math.inf)],
            "grid": torch.tensor([[0.0, float("nan")], [1.0, 2.0]]),
            "history": [{"epoch": 1, "loss": float("inf")}],
        },
    )
    text = f.read_text()
    assert "NaN" not in text and "Infinity" not in text
    got = read_json(f)
    assert got["loss"] is None and got["loss_nonfinite"] == "nan" and got["acc"] == 0.5
    assert got["curve"] == [1.0, None, None]
    assert got["curve_nonfinite"] == {"1": "inf", "2": "-inf"}
    assert got["grid"] == [[0.0, None], [1.0, 2.0]] and got["grid_nonfinite"] == {"0,1": "nan"}
    assert got["history"][0] == {"epoch": 1, "loss": None, "loss_nonfinite": "inf"}
    f.write_text('{"loss": NaN}')
    with pytest.raises(IsthmusError, match="NaN is not JSON"):
        read_json(f)


def test_a_checkpoint_is_one_file_with_its_state_in_the_header(tmp_path):
    from isthmus.io import load_checkpoint, save_checkpoint, save_tensors

    f = tmp_path / "c.safetensors"
    save_checkpoint(f, {"x": torch.arange(3.0)}, {"epoch": 4, "history": [{"loss": 0.5}]})
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
    t, state = load_checkpoint(f)
    assert torch.equal(t["x"], torch.arange(3.0)) and state["epoch"] == 4
    save_tensors(f, {"x": torch.zeros(1)})  # tensors without a state: not a checkpoint
    with pytest.raises(IsthmusError, match="not an isthmus checkpoint"):
        load_checkpoint(f)


def test_restore_nonfinite_inverts_strict_json(tmp_path):
    import math

    from isthmus.io import read_json, restore_nonfinite, write_json

    doc = {"values": {"tl": [1.0, float("inf")], "g": [[float("nan"), 2.0]]}, "x": -math.inf}
    write_json(tmp_path / "a.json", doc)
    back = restore_nonfinite(read_json(tmp_path / "a.json"))
    assert back["x"] == -math.inf and back["values"]["tl"] == [1.0, math.inf]
    assert math.isnan(back["values"]["g"][0][0]) and back["values"]["g"][0][1] == 2.0
    assert set(back["values"]) == {"tl", "g"}


def test_restore_nonfinite_leaves_malformed_records_alone():
    from isthmus.io import restore_nonfinite

    doc = {
        "x": None,
        "x_nonfinite": "bogus",  # not nan/inf/-inf: the null stays
        "v": [None, 1.0],
        "v_nonfinite": {"a": "inf", "9": "nan", "1": "inf", "0,3": "inf"},
    }
    back = restore_nonfinite(doc)
    assert back == {"x": None, "v": [None, 1.0]}  # a finite value is never replaced


def test_inputs_and_files_records_refuse_other_weights_and_other_files(tmp_path):
    import torch

    from isthmus.errors import IsthmusError
    from isthmus.io import check_files, check_inputs, file_sha256, inputs_record

    a, b = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    doc = {"inputs": inputs_record([("runs/a", a)], {"name": "digits", "root": None, "seed": 0})}
    check_inputs("r.json", doc, [("runs/a", a)])
    with pytest.raises(IsthmusError, match=r"r.json: was computed for other weights \(runs/a\) "
                       r"than those of runs/b \(field 'inputs.runs\[0\].sha256'\)"):  # fmt: skip
        check_inputs("r.json", doc, [("runs/b", b)])
    with pytest.raises(IsthmusError, match="no field 'inputs' recording 2 run"):
        check_inputs("r.json", doc, [("runs/a", a), ("runs/b", b)])
    (tmp_path / "t.bin").write_bytes(b"tensors")
    files = {"files": {"t.bin": file_sha256(tmp_path / "t.bin")}}
    check_files(tmp_path / "r.json", files, ["t.bin"], "isthmus x")
    (tmp_path / "t.bin").write_bytes(b"other tensors")
    with pytest.raises(IsthmusError, match="t.bin: its sha256 differs from field 'files'"):
        check_files(tmp_path / "r.json", files, ["t.bin"], "isthmus x")
    with pytest.raises(IsthmusError, match="no field 'files' with the sha256 of t.bin"):
        check_files(tmp_path / "r.json", {}, ["t.bin"], "isthmus x")
