"""Sweeps: the spec's checks name the file, the key and the fix; the local pool and a real Ray
instance give the same table; a sweep SIGKILLed mid-run and rerun skips its finished jobs and
ends with the table of an uninterrupted run; a failing job is recorded, blocks the jobs that read
its nets, and runs again only on request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_spec

from isthmus.cli import main
from isthmus.errors import IsthmusError
from isthmus.sweep import load_spec, plan, run_sweep
from isthmus.sweep.spec import check_models

EXE = [sys.executable, "-c", "import sys; from isthmus.cli import main; sys.exit(main())"]

SPEC = """
[data]
name = "digits"

[[train]]
name = "mlp"
seeds = [0, 1]
model = "mlp"
depth = 2
width = 8
epochs = 1
[train.grid]
lr = [0.05, 0.1]

[[connect]]
name = "lines"
runs = "mlp"
method = "linear"
points = 5

[[stability]]
name = "drop"
runs = "mlp"
strategy = "random"
draws = 4

[[hessian]]
name = "curv"
runs = "mlp"
top = 2
examples = 100
"""


def test_the_spec_expands_into_jobs_with_their_inputs(tmp_path):
    spec = load_spec(write_spec(tmp_path, SPEC))
    jobs = plan(spec)
    ids = [j["id"] for j in jobs]
    # one population (2 lr x 2 seeds), a line per lr between seeds 0 and 1, one job per net
    assert ids[:3] == ["mlp/pop0", "lines/r0-s0-s1-p0-seed0", "lines/r1-s0-s1-p0-seed0"]
    assert len(jobs) == 1 + 2 + 4 + 4 and len(set(ids)) == len(ids)
    line = jobs[2]
    assert line["deps"] == ["mlp/pop0"] and line["inputs"][0]["values"] == {"lr": 0.1}
    # member k of the population: lr (0.05, 0.1) x seeds (0, 1), in that order
    assert [i["run"] for i in line["inputs"]] == ["jobs/mlp/pop0/0/2", "jobs/mlp/pop0/0/3"]
    solo = load_spec(
        write_spec(tmp_path, SPEC.replace("epochs = 1", "epochs = 1\npopulation = false"), "b.toml")
    )
    assert [j["id"] for j in plan(solo)][:4] == ["mlp/p0-s0", "mlp/p0-s1", "mlp/p1-s0", "mlp/p1-s1"]


BAD = [
    ("lrr = 0.1", "[[train]] 'mlp', key 'lrr': unknown key", "correct its spelling"),
    ("lr = -1.0", "key 'lr': must be a finite number in (0, 1000.0]", "inside that range"),
    ('batch_size = "2"', "key 'batch_size': expected int, got str", "a value of that type"),
    ("batch_size = 0", "key 'batch_size': must be >= 1", "inside that range"),
    ("bias = 1", "key 'bias': expected bool, got int", "a value of that type"),
    ('optimizer = "rmsprop"', "key 'optimizer': must be one of sgd, adam", "one of those"),
    ("seeds = []", "key 'seeds': must be a non-empty list", "seeds = [0, 1, 2]"),
    ("list = [{lr = 0.1}]", "either grid or list", "keep one of them"),
]


@pytest.mark.parametrize(("line", "why", "fix"), BAD)
def test_a_bad_spec_names_the_file_the_key_and_the_fix(tmp_path, line, why, fix):
    text = SPEC.replace('name = "mlp"\n', f'name = "mlp"\n{line}\n', 1)
    text = text.replace("seeds = [0, 1]\n", "") if line.startswith("seeds") else text
    path = write_spec(tmp_path, text)
    with pytest.raises(IsthmusError) as e:
        load_spec(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and why in msg and "; fix: " in msg and fix in msg, msg


def test_more_spec_errors(tmp_path):
    cases = {
        'runs = "mlp"\nmethod': ('runs = "nope"\nmethod', "key 'runs': names no [[train]] group"),
        "[data]": ("[dat]", "top level, key 'dat': unknown key"),
        'name = "digits"': ('name = "digitz"', "[data], key 'name': must be one of"),
        "lr = [0.05, 0.1]": ("lr = []", "key 'grid.lr': must be a non-empty list"),
        'name = "lines"': ('name = "mlp"', "the name is used twice"),
    }
    for old, (new, why) in cases.items():
        path = write_spec(tmp_path, SPEC.replace(old, new, 1))
        with pytest.raises(IsthmusError, match="fix: ") as e:
            load_spec(path)
        assert str(e.value).startswith(str(path)) and why in str(e.value), str(e.value)
    with pytest.raises(IsthmusError, match="not valid TOML"):
        load_spec(write_spec(tmp_path, SPEC + "\n[[train]\n"))
    # checks that need the data set: the model's own validation, on digits' 64 inputs
    spec = load_spec(write_spec(tmp_path, SPEC.replace("width = 8", "width = [8, 8, 8]")))
    with pytest.raises(IsthmusError, match=r"'mlp', point 0 \(lr=0.05\): width lists 3 .* fix: "):
        check_models(spec, (64,), 10)
    one = write_spec(tmp_path, SPEC.replace("seeds = [0, 1]", "seeds = [0]"))
    with pytest.raises(IsthmusError, match="no pair of nets to join; fix: give"):
        plan(load_spec(one))


def _table(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


@pytest.mark.e2e
def test_local_and_ray_give_the_same_table(tmp_path):
    pytest.importorskip("ray", reason="the ray backend needs `pip install 'isthmus[ray]'`")
    spec = write_spec(tmp_path, SPEC)
    local = run_sweep(spec, tmp_path / "local", workers=2, progress=False)
    ray = run_sweep(spec, tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert local.counts == ray.counts == {"done": 11, "skipped": 0, "failed": 0, "blocked": 0}
    assert _table(tmp_path / "local") == _table(tmp_path / "ray") == local.rows
    rows = local.rows
    assert [r["kind"] for r in rows] == ["train"] * 4 + ["connect"] * 2 + ["stability"] * 4 + [
        "hessian"
    ] * 4
    assert all(0 <= r["test_acc"] <= 1 for r in rows[:4]) and all(
        r["top_eigenvalue"] > 0 for r in rows[-4:]
    )
    csv = (tmp_path / "ray" / "results.csv").read_text().splitlines()
    assert len(csv) == 15 and csv[0].startswith("group,kind,job,point,lr,seed,run")
    assert (tmp_path / "ray" / "sweep.png").stat().st_size > 10_000
    doc = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert doc["backend"] == "ray" and doc["spec"]["data"] == {"name": "digits"}
    assert all(j["status"] == "done" and j["duration"] > 0 and j["result"] for j in doc["jobs"])


KILL_SPEC = """
[data]
name = "digits"

[[train]]
name = "nets"
seeds = [0, 1, 2, 3]
population = false
width = 64
epochs = 4
"""


@pytest.mark.e2e
def test_a_killed_sweep_reruns_only_what_did_not_finish(tmp_path):
    spec = write_spec(tmp_path, KILL_SPEC)
    ref = run_sweep(spec, tmp_path / "ref", workers=1, progress=False)
    out = tmp_path / "out"
    argv = [*EXE, "sweep", str(spec), "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(argv, start_new_session=True, stderr=subprocess.PIPE)
    jobs = out / "jobs" / "nets"
    deadline = time.monotonic() + 300
    while not (jobs.is_dir() and any((d / "done.json").exists() for d in jobs.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker, mid-sweep
    proc.wait()
    finished = {
        d.name: (d / "done.json").stat().st_mtime_ns
        for d in jobs.iterdir()
        if (d / "done.json").exists()
    }
    assert 1 <= len(finished) < 4
    assert (
        main(["sweep", str(spec), "--workers", "1", "--out", str(out)]) == 2
    )  # not without --resume
    assert main(["sweep", str(spec), "--workers", "1", "--resume", "--out", str(out)]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    skipped = {j["id"].split("/")[1] for j in doc["jobs"] if j["status"] == "skipped"}
    assert skipped == set(finished)
    assert {d: (jobs / d / "done.json").stat().st_mtime_ns for d in finished} == finished
    assert all(j["status"] in ("done", "skipped") for j in doc["jobs"])
    assert _table(out) == ref.rows  # the same numbers as a sweep never interrupted


FAIL_SPEC = """
[data]
name = "digits"

[[train]]
name = "nets"
seeds = [0]
population = false
depth = 2
width = 8
epochs = 1
list = [{lr = 0.05}, {lr = 1000.0, schedule = "constant"}]

[[hessian]]
name = "curv"
runs = "nets"
top = 1
examples = 50
"""


def test_a_failed_job_is_recorded_and_retried_on_request(tmp_path, capsys):
    spec, out = write_spec(tmp_path, FAIL_SPEC), tmp_path / "out"
    first = run_sweep(spec, out, workers=2, progress=False)
    assert first.counts == {"done": 2, "skipped": 0, "failed": 1, "blocked": 1}
    bad = out / "jobs" / "nets" / "p1-s0.failed.json"
    rec = json.loads(bad.read_text())
    assert "diverged" in rec["error"] and rec["attempts"] == 1 and "Traceback" in rec["traceback"]
    entries = {e["id"]: e for e in first.jobs}
    assert (
        entries["nets/p1-s0"]["status"] == "failed" and "diverged" in entries["nets/p1-s0"]["error"]
    )
    assert entries["curv/r1-s0-p0-seed0"]["status"] == "blocked"
    assert [r["job"] for r in first.rows] == ["nets/p0-s0", "curv/r0-s0-p0-seed0"]
    again = run_sweep(spec, out, workers=2, progress=False)  # kept, not retried
    assert again.counts == {"done": 0, "skipped": 2, "failed": 1, "blocked": 1}
    assert json.loads(bad.read_text())["attempts"] == 1
    argv = ["sweep", str(spec), "--workers", "2", "--resume", "--retry-failed", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr()
    assert "failed nets/p1-s0: IsthmusError: training diverged" in err.out
    assert "rerun with --resume --retry-failed" in err.err
    assert json.loads(bad.read_text())["attempts"] == 2  # it ran again, and failed again
    changed = write_spec(tmp_path, FAIL_SPEC.replace("epochs = 1", "epochs = 2"))
    with pytest.raises(IsthmusError, match="run with other settings .* --overwrite"):
        run_sweep(changed, out, workers=2, progress=False)


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(
        IsthmusError,
        match=r"needs Ray, which is not installed; install it with pip install 'isthmus\[ray\]'",
    ):
        run_sweep(write_spec(tmp_path, SPEC), tmp_path / "out", backend="ray", progress=False)
    with pytest.raises(IsthmusError, match="--address auto is for --backend ray"):
        run_sweep(write_spec(tmp_path, SPEC), tmp_path / "out", address="auto", progress=False)


def test_train_points_writes_populations_and_batchnorm_nets_alike(small_mnist1d, tmp_path):
    from isthmus.io import load_run
    from isthmus.models import ModelConfig
    from isthmus.study import train_points
    from isthmus.train import TrainConfig

    mlp = ModelConfig(kind="mlp", depth=2, width=8, input_shape=(40,))
    bn = ModelConfig(kind="cnn", channels=(4, "M"), batchnorm=True, input_shape=(40,))
    tc = TrainConfig(epochs=1, batch_size=128)
    points = [(mlp, tc), (bn, tc), (mlp, TrainConfig(lr=0.1, epochs=1, batch_size=128))]
    runs = train_points(points, small_mnist1d, [3, 4], out=tmp_path, progress=False)
    # the two MLP points share population 0 (lr differs per member), the BatchNorm net trains alone
    assert [(r["point"], r["seed"]) for r in runs] == [
        (0, 3),
        (0, 4),
        (2, 3),
        (2, 4),
        (1, 3),
        (1, 4),
    ]
    assert [r["run"].relative_to(tmp_path).as_posix() for r in runs] == [
        "0/0",
        "0/1",
        "0/2",
        "0/3",
        "1/0",
        "1/1",
    ]
    for r in runs:
        run = load_run(r["run"])
        assert run.config["seed"] == r["seed"] and run.model_config == r["model_config"]
        assert run.config["train"]["lr"] == points[r["point"]][1].lr
