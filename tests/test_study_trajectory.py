"""The study measured during training: the trajectory's epochs, its last point is the end
measurement, and measuring along the way changes no training number."""

from __future__ import annotations

import json

import pytest

from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig
from isthmus.study import run_study
from isthmus.train import TrainConfig

MLP = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(40,))
TC = TrainConfig(lr=0.05, epochs=5, batch_size=128)
KW = dict(examples=200, directions=2, probes=4, progress=False)
FIELDS = ("train_loss", "test_acc", "radius", "top_eigenvalue", "trace", "trace_stderr")
FIELDS += ("random_rise", "radial_rise")


def test_the_trajectory_ends_at_the_end_measurement(small_mnist1d):
    d = small_mnist1d
    end_only = run_study(MLP, d, TC, "lr", [0.02, 0.1], [0, 1], measure_every=0, **KW)
    along = run_study(MLP, d, TC, "lr", [0.02, 0.1], [0, 1], measure_every=2, **KW)
    assert all(r["trajectory"] == [] for r in end_only.rows)
    for a, b in zip(end_only.rows, along.rows, strict=True):
        # measured after training vs in the hook at the last epoch: the same numbers, exactly
        assert {k: a[k] for k in FIELDS} == {k: b[k] for k in FIELDS}
        assert [t["epoch"] for t in b["trajectory"]] == [2, 4, 5]
        assert {k: b["trajectory"][-1][k] for k in FIELDS} == {k: b[k] for k in FIELDS}
    # the points along the way are other nets: the radius grows while the loss falls
    t = along.rows[-1]["trajectory"]
    assert t[0]["radius"] < t[-1]["radius"] and t[0]["train_loss"] > t[-1]["train_loss"]
    summary = along.trajectories()
    assert [s["value"] for s in summary] == [0.02, 0.1] and summary[0]["epochs"] == [2, 4, 5]
    mean = (along.rows[0]["trajectory"][1]["trace"] + along.rows[1]["trajectory"][1]["trace"]) / 2
    assert summary[0]["trace"]["mean"][1] == pytest.approx(mean, rel=1e-12)
    assert end_only.trajectories() == []


def test_widths_get_trajectories_and_bad_settings_are_refused(small_mnist1d):
    res = run_study(MLP, small_mnist1d, TC, "width", [8, 12], [0], measure_every=3, **KW)
    assert [[t["epoch"] for t in r["trajectory"]] for r in res.rows] == [[3, 5], [3, 5]]
    with pytest.raises(IsthmusError, match="measure_every"):
        run_study(MLP, small_mnist1d, TC, "lr", [0.02, 0.1], [0], measure_every=-1, **KW)


@pytest.mark.e2e
def test_the_study_command_measures_along_training(tmp_path):
    from isthmus.cli import main

    out = tmp_path / "s"
    argv = ["study", "l2", "--values", "0", "0.01", "--seeds", "2", "--data", "digits"]
    argv += ["--width", "16", "--epochs", "3", "--examples", "100", "--measure-every", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    doc = json.loads((out / "study.json").read_text())
    assert doc["settings"]["measure_every"] == 1
    assert all([t["epoch"] for t in r["trajectory"]] == [1, 2, 3] for r in doc["rows"])
    assert [t["epochs"] for t in doc["trajectories"]] == [[1, 2, 3]] * 2
    assert (out / "study_l2_epochs.png").stat().st_size > 10_000
    from isthmus import plot  # the figure again, from study.json alone

    assert plot.study_trajectories(doc, tmp_path / "again").stat().st_size > 10_000
