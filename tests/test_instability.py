"""Instability analysis: training split at an optimiser step continues exactly, copies differ only
through their data order, the barrier vanishes where no training is left, resume skips finished
spawn steps to the same numbers; the command, its files and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from isthmus import instability as inst
from isthmus.cli import main
from isthmus.errors import IsthmusError
from isthmus.instability import InstabilityConfig, instability, stable_step
from isthmus.models import ModelConfig
from isthmus.report import build_report, detect
from isthmus.train import TrainConfig, continue_training, train

CNN = ModelConfig(kind="cnn", channels=(4, "M", 4, "M"), input_shape=(64,), num_classes=10)
BN_CNN = ModelConfig(
    kind="cnn", channels=(4, "M"), input_shape=(64,), num_classes=10, batchnorm=True
)
TC = TrainConfig(epochs=2, batch_size=64, lr=0.1)  # 512 examples: 8 steps per epoch, 16 in all


@pytest.fixture(scope="module")
def data():
    from isthmus.data import load

    return load("digits").subset(512, 256, seed=0)


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_training_split_inside_an_epoch_continues_bit_for_bit(data, one_thread):
    """Stopping at step 5 (inside epoch 1) and continuing from the returned state is the same
    computation as training straight through: the seam the parent and its copies use."""
    adam = TrainConfig(optimizer="adam", lr=1e-3, epochs=2, batch_size=64)
    whole = train(CNN, data, adam, 3, progress=False).params
    _, state = continue_training(CNN, data, adam, [3], max_steps=5, vmapped=False, progress=False)
    assert state.step == 5
    (rest,), end = continue_training(CNN, data, adam, [3], state, vmapped=False, progress=False)
    assert end.step == 16 and _same(rest.params, whole)


@pytest.mark.parametrize("model", [CNN, BN_CNN], ids=["population", "batchnorm"])
def test_copies_with_the_same_order_are_identical_and_other_orders_differ(data, model, one_thread):
    """Same order seed: bit-identical copies at every spawn step (inside an epoch too), so the
    instability comes from the data order alone; the default order seeds give other nets."""
    cfg = InstabilityConfig((0, 5, 8), points=3)
    same = instability(model, data, TC, cfg, seed=1, order_seeds=[7, 7], progress=False)
    for k in cfg.spawn_at:
        a, b = same.copies[k]
        assert _same(a, b), k
        assert all(p["test_error"] == 0 and p["train_loss"] == 0 for p in same.spawns[0]["pairs"])
    other = instability(model, data, TC, cfg, seed=1, progress=False)
    for k in cfg.spawn_at:
        a, b = other.copies[k]
        assert not torch.equal(a["fcs.0.weight"], b["fcs.0.weight"]), k
    # the parent is the same whatever the copies do: same seed, same parent metrics
    assert [s["parent"] for s in same.spawns] == [s["parent"] for s in other.spawns]


def test_spawning_at_the_last_step_gives_identical_copies_and_zero_barrier(data, one_thread):
    res = instability(CNN, data, TC, InstabilityConfig((16,), points=3), seed=0, progress=False)
    a, b = res.copies[16]
    assert _same(a, b)
    assert res.spawns[0]["mean"] == {k: 0.0 for k in inst.BARRIERS}
    assert res.stable_step == 16 and res.done


def test_resume_skips_finished_spawn_steps_and_gives_the_same_numbers(
    data, tmp_path, monkeypatch, one_thread
):
    cfg = InstabilityConfig((0, 3, 10), points=3)
    full = instability(CNN, data, TC, cfg, seed=2, out=tmp_path / "a", progress=False)
    real, spawned = inst._spawn, []

    def interrupted(model_cfg, data, train_cfg, parent, *a, **kw):
        spawned.append(parent.step)
        if spawned == [0, 3]:  # killed while the copies of step 3 train
            raise KeyboardInterrupt
        return real(model_cfg, data, train_cfg, parent, *a, **kw)

    monkeypatch.setattr(inst, "_spawn", interrupted)
    with pytest.raises(KeyboardInterrupt):
        instability(CNN, data, TC, cfg, seed=2, out=tmp_path / "b", progress=False)
    partial = json.loads((tmp_path / "b" / inst.RESULT_FILE).read_text())
    assert [s["step"] for s in partial["spawns"]] == [0] and not partial["done"]
    res = instability(CNN, data, TC, cfg, seed=2, out=tmp_path / "b", resume=True, progress=False)
    assert spawned == [0, 3, 3, 10]  # step 0 was done: skipped
    assert res.to_json() == full.to_json()
    assert json.loads((tmp_path / "b" / inst.RESULT_FILE).read_text())["done"]
    with pytest.raises(IsthmusError, match="another instability analysis"):
        other = InstabilityConfig((0, 3, 10), points=4)
        instability(CNN, data, TC, other, seed=2, out=tmp_path / "b", resume=True, progress=False)


def test_resume_takes_new_spawn_steps_before_and_after_the_finished_ones(
    data, tmp_path, one_thread
):
    full = instability(CNN, data, TC, InstabilityConfig((0, 2, 6, 12), points=3), seed=2,
                       progress=False)  # fmt: skip
    first = InstabilityConfig((0, 6), points=3)
    instability(CNN, data, TC, first, seed=2, out=tmp_path / "r", progress=False)
    more = InstabilityConfig((0, 2, 6, 12), points=3)  # 2: before the checkpoint; 12: after it
    res = instability(CNN, data, TC, more, seed=2, out=tmp_path / "r", resume=True, progress=False)
    assert res.to_json() == full.to_json()
    fewer = InstabilityConfig((2, 12), points=3)  # dropping steps keeps the rest as they were
    res = instability(CNN, data, TC, fewer, seed=2, out=tmp_path / "r", resume=True, progress=False)
    assert res.spawns == [r for r in full.spawns if r["step"] in (2, 12)] and res.done


def test_what_cannot_be_measured_is_refused(data):
    with pytest.raises(IsthmusError, match="from 0 to 16"):
        instability(CNN, data, TC, InstabilityConfig((0, 17)), progress=False)
    with pytest.raises(IsthmusError, match="dropout"):
        bad = TrainConfig(epochs=2, batch_size=64, dropout=0.5)
        instability(CNN, data, bad, InstabilityConfig((0,)), progress=False)
    with pytest.raises(IsthmusError, match="at least 2 copies"):
        instability(CNN, data, TC, InstabilityConfig((0,), copies=1), progress=False)


def test_stable_step_is_the_first_from_which_every_barrier_stays_low():
    def sp(k, e):
        return {"step": k, "mean": {"test_error": e}}

    assert stable_step([sp(0, 0.3), sp(5, 0.01), sp(9, 0.05), sp(20, 0.01)], 0.02) == 20
    assert stable_step([sp(0, 0.3), sp(5, 0.01), sp(9, 0.0)], 0.02) == 5
    assert stable_step([sp(0, 0.3), sp(5, 0.03)], 0.02) is None


@pytest.mark.e2e
def test_command_writes_the_curve_resumes_and_reports(tmp_path, one_thread):
    out = tmp_path / "inst"
    argv = ["instability", "--data", "digits", "--model", "mlp", "--depth", "2", "--width", "8",
            "--epochs", "1", "--batch-size", "500", "--spawn-at", "0,1,3", "--points", "3",
            "--seed", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / inst.RESULT_FILE).read_text())
    assert doc["done"] and [s["step"] for s in doc["spawns"]] == [0, 1, 3]
    assert doc["settings"]["total_steps"] == 3 and doc["settings"]["copies"] == 2
    assert doc["inputs"]["data"]["name"] == "digits"
    assert doc["spawns"][-1]["mean"]["test_error"] == 0.0  # no training left after step 3
    for s in doc["spawns"]:
        assert len(s["pairs"]) == 1 and s["stable"] == (s["mean"]["test_error"] < 0.02)
        for c in (0, 1):
            assert (out / f"spawn_{s['step']:06d}" / str(c) / "model.safetensors").is_file()
    assert (out / "instability.png").is_file()
    assert main(argv) == 2  # an existing result is never replaced without --overwrite
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / inst.RESULT_FILE).read_text()) == doc
    assert main([*argv[:-6], "--spawn-at", "0,9", "--out", str(tmp_path / "x")]) == 2
    assert detect(out) == ["instability"]
    html = build_report(out).html()
    assert "Instability of training" in html and html.count('<img src="data:image/png') == 1
    assert f"{doc['spawns'][0]['mean']['test_error']:.4g}" in html
    assert "isthmus instability --data digits" in html
    assert Path(out / "command.json").is_file()
