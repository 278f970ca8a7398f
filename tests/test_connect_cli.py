"""End-to-end: `isthmus connect` and `isthmus surface` on tiny runs, in-process."""

from __future__ import annotations

import json

import pytest
import torch

from isthmus.cli import main
from isthmus.data import load
from isthmus.io import load_run, load_tensors
from isthmus.models import ModelConfig
from isthmus.paths import load_path
from isthmus.paths.bezier import BezierPath
from isthmus.train import TrainConfig, train

pytestmark = pytest.mark.e2e
SPEC = {"name": "gaussians", "root": None, "seed": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = load("gaussians")
    mlp = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(20,))
    cfg = TrainConfig(epochs=1, batch_size=256)
    for s in (0, 1, 2):
        train(mlp, data, cfg, seed=s, out=root / f"m{s}", progress=False, data_spec=SPEC)
    wide = ModelConfig(kind="mlp", depth=3, width=20, input_shape=(20,))
    train(wide, data, cfg, seed=0, out=root / "wide", progress=False, data_spec=SPEC)
    return root


def _json(path) -> dict:
    return json.loads(path.read_text())


def test_connect_linear_writes_path_files_and_reproduces_endpoint_metrics(runs, tmp_path, capsys):
    out = tmp_path / "lin"
    args = ["connect", str(runs / "m0"), str(runs / "m1"), "--method", "linear"]
    assert main([*args, "--points", "11", "--out", str(out)]) == 0
    pj = _json(out / "path.json")
    for key in ("method", "t", "train_loss", "train_acc", "test_loss", "test_acc", "barrier"):
        assert key in pj
    assert pj["method"] == "linear" and len(pj["t"]) == 11
    assert set(pj["barrier"]) >= {"train_loss", "train_loss_vs_mean", "test_loss", "t_max"}
    for i, run in ((0, "m0"), (-1, "m1")):
        m = load_run(runs / run).metrics
        assert pj["train_loss"][i] == pytest.approx(m["train_loss"], rel=1e-5)
        assert pj["test_acc"][i] == pytest.approx(m["test_acc"], abs=1e-9)
    assert (out / "path.png").stat().st_size > 0
    assert "barrier" in capsys.readouterr().out


def test_connect_bezier_resume_and_surface_through_its_bend(runs, tmp_path):
    out = tmp_path / "bz"
    args = [
        "connect",
        str(runs / "m0"),
        str(runs / "m1"),
        "--method",
        "bezier",
        "--epochs",
        "2",
        "--points",
        "7",
        "--batch-size",
        "512",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    pj = _json(out / "path.json")
    assert pj["method"] == "bezier" and pj["bends"] == 1 and len(pj["fit_history"]) == 2
    assert "linear" in pj and "barrier" in pj["linear"]
    path = BezierPath.from_tensors(load_tensors(out / "path.safetensors"))
    a, b = load_run(runs / "m0").params, load_run(runs / "m1").params
    ends = path.points(torch.tensor([0.0, 1.0]))
    assert all(torch.equal(ends[k][0], a[k]) and torch.equal(ends[k][1], b[k]) for k in a)
    first = load_tensors(out / "path.safetensors")
    assert main([*args, "--resume"]) == 0  # finished fit: resuming reproduces it
    again = load_tensors(out / "path.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)

    sdir = tmp_path / "surf"
    assert (
        main(
            [
                "surface",
                str(runs / "m0"),
                str(runs / "m1"),
                "--path",
                str(out),
                "--grid",
                "4",
                "--out",
                str(sdir),
            ]
        )
        == 0
    )
    sj = _json(sdir / "surface.json")
    assert sj["kind"] == "plane" and len(sj["train_loss"]) == 4 and len(sj["train_loss"][0]) == 4
    assert set(sj["points"]) == {"m0", "m1", "bend"} and len(sj["paths"]["bezier"]) == 61
    assert (sdir / "surface.png").stat().st_size > 0


@pytest.mark.parametrize(
    "method,extra", [("chain", ["--epochs", "1"]), ("neb", ["--epochs", "1", "--cycles", "2"])]
)
def test_connect_chain_and_neb_report_segments(runs, tmp_path, method, extra):
    out = tmp_path / method
    assert (
        main(
            [
                "connect",
                str(runs / "m0"),
                str(runs / "m1"),
                "--method",
                method,
                "--points",
                "7",
                "--batch-size",
                "512",
                "--out",
                str(out),
                *extra,
            ]
        )
        == 0
    )
    pj = _json(out / "path.json")
    assert pj["method"] == method
    segs = pj["segments"]
    assert len(segs) >= 2 and segs[0]["t0"] == 0.0 and segs[-1]["t1"] == 1.0
    assert all(s["max_loss"] >= max(s["loss0"], s["loss1"]) for s in segs)
    path = load_path(out)
    assert len(path.knots()) == len(segs) + 1
    first = load_tensors(out / "path.safetensors")
    args = ["connect", str(runs / "m0"), str(runs / "m1"), "--method", method, "--points", "7"]
    assert main([*args, "--batch-size", "512", "--out", str(out), *extra, "--resume"]) == 0
    again = load_tensors(out / "path.safetensors")  # resuming a finished run reproduces it
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_connect_refuses_different_architectures(runs, tmp_path, capsys):
    code = main(
        [
            "connect",
            str(runs / "m0"),
            str(runs / "wide"),
            "--method",
            "linear",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "different architectures" in err and "m0" in err and "wide" in err
    assert "model.width" in err
    assert not (tmp_path / "x" / "path.json").exists()


def test_surface_plane_of_three_runs_and_random_slices(runs, tmp_path):
    out = tmp_path / "plane"
    assert (
        main(
            ["surface", *(str(runs / f"m{s}") for s in range(3)), "--grid", "3", "--out", str(out)]
        )
        == 0
    )
    sj = _json(out / "surface.json")
    assert sj["points"]["m0"] == [0.0, 0.0] and sj["points"]["m1"][1] == 0.0
    assert (out / ".checkpoint" / "surface.json").exists()
    again = ["surface", *(str(runs / f"m{s}") for s in range(3)), "--grid", "3", "--resume"]
    assert main([*again, "--out", str(out)]) == 0  # a finished grid: nothing left to compute
    assert _json(out / "surface.json")["train_loss"] == sj["train_loss"]
    assert main([*again, "--out", str(tmp_path / "none")]) == 2  # nothing to resume
    for dims in ("1", "2"):
        o = tmp_path / f"r{dims}"
        assert (
            main(
                [
                    "surface",
                    "--around",
                    str(runs / "m0"),
                    "--dims",
                    dims,
                    "--grid",
                    "5",
                    "--out",
                    str(o),
                ]
            )
            == 0
        )
        sj = _json(o / "surface.json")
        assert sj["kind"] == "random" and sj["x"][0] == -1.0 and sj["x"][-1] == 1.0
        center = sj["train_loss"][2] if dims == "1" else sj["train_loss"][2][2]
        assert center == pytest.approx(load_run(runs / "m0").metrics["train_loss"], rel=1e-5)
    assert main(["surface", str(runs / "m0"), "--out", str(tmp_path / "bad")]) == 2


def test_tree_over_three_runs_is_a_minimax_tree_and_resumes(runs, tmp_path, capsys):
    out = tmp_path / "tree"
    names = [str(runs / f"m{s}") for s in range(3)]
    args = ["tree", *names, "--method", "linear", "--points", "7", "--out", str(out)]
    assert main(args) == 0
    tj = _json(out / "tree.json")
    assert tj["done"] and set(tj["pairs"]) == {"0-1", "0-2", "1-2"}
    w = tj["tree"]["weights"]
    for key, v in tj["pairs"].items():
        i, j = (int(s) for s in key.split("-"))
        assert w[i][j] == w[j][i] == v["max_loss"]
        # the line's max loss is at least the larger endpoint loss: a weight is never below it
        assert v["max_loss"] >= v["barrier"] - 1e-12
    edges = tj["tree"]["edges"]
    assert len(edges) == 2 and tj["tree"]["worst"] == max(e["weight"] for e in edges)
    # minimax: the pair left out of the tree is no lighter than the tree's worst edge
    left = {(0, 1), (0, 2), (1, 2)} - {(e["i"], e["j"]) for e in edges}
    (i, j) = left.pop()
    assert w[i][j] >= tj["tree"]["worst"]
    assert (out / "tree.png").stat().st_size > 0
    assert "worst edge" in capsys.readouterr().out
    # an interrupted tree: keep one pair and --resume computes only the others, same numbers
    partial = {**tj, "pairs": {"0-1": tj["pairs"]["0-1"]}, "done": False}
    del partial["tree"]
    (out / "tree.json").write_text(json.dumps(partial))
    assert main([*args, "--resume"]) == 0
    assert _json(out / "tree.json")["pairs"] == tj["pairs"]
    assert main(args) == 2  # exists without --resume
    assert main([*args[:-1], str(tmp_path / "t2"), "--weight", "barrier", "--resume"]) == 2
    assert "no tree checkpoint" in capsys.readouterr().err  # nothing to resume there
    assert main(["tree", names[0], names[1], "--out", str(tmp_path / "t3")]) == 2
    assert main([*args[:-1], str(tmp_path / "t5"), "--points", "1"]) == 2
    assert main(["tree", *names[:2], str(runs / "wide"), "--out", str(tmp_path / "t4")]) == 2
    assert "different architectures" in capsys.readouterr().err


def test_tree_with_autoneb_pairs(runs, tmp_path):
    out = tmp_path / "nebtree"
    names = [str(runs / f"m{s}") for s in range(3)]
    extra = ["--epochs", "1", "--cycles", "1", "--points", "5", "--batch-size", "512"]
    assert main(["tree", *names, *extra, "--out", str(out)]) == 0
    tj = _json(out / "tree.json")
    assert tj["settings"]["method"] == "neb" and len(tj["tree"]["edges"]) == 2
    # every path starts and ends at the runs: its highest loss is at least theirs
    losses = [load_run(n).metrics["train_loss"] for n in names]
    for key, v in tj["pairs"].items():
        i, j = (int(s) for s in key.split("-"))
        assert v["max_loss"] >= max(losses[i], losses[j]) * (1 - 1e-5)


@pytest.mark.parametrize(
    "argv",
    [
        ["surface", "a", "b", "c", "--chunk", "-1"],
        ["connect", "a", "b", "--points", "0"],
        ["tree", "a", "b", "c", "--batch-size", "x"],
    ],
)
def test_sizes_must_be_positive_integers(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert argv[-2] in err and ("must be >= " in err or "integer >= 1" in err)


def test_paths_connect_from_python_is_what_the_cli_writes(runs, tmp_path):
    from isthmus.paths import connect

    out = tmp_path / "lin"
    argv = ["connect", str(runs / "m0"), str(runs / "m1"), "--method", "linear"]
    assert main([*argv, "--points", "11", "--out", str(out)]) == 0
    a, b = load_run(runs / "m0"), load_run(runs / "m1")
    c = connect(a.model, a.params, b.params, load("gaussians"), "linear", points=11)
    pj = _json(out / "path.json")
    for key, value in json.loads(json.dumps(c.result.to_json())).items():
        assert pj[key] == value, key  # the same calls in the same process
    assert c.line.train_loss == c.result.train_loss and pj["runs"] == [
        str(runs / "m0"),
        str(runs / "m1"),
    ]


def test_a_dropout_path_round_trips_through_its_files(runs, tmp_path):
    out = tmp_path / "drop"
    argv = ["connect", str(runs / "m0"), str(runs / "m1"), "--method", "dropout"]
    assert main([*argv, "--points", "7", "--out", str(out)]) == 0
    path = load_path(out)
    assert path.method == "dropout"
    saved, again = load_tensors(out / "path.safetensors"), path.tensors()
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    # the reloaded path names its dropout versions again, so it certifies as written
    from isthmus.paths.certificate import certify, in_float64

    run = load_run(runs / "m0")
    d = load("gaussians")
    model, _ = in_float64(run.model)
    _, cert = certify(model, path, d.x_train.double(), d.y_train, d.loss)
    assert cert["holds"] and cert["holds"] == _json(out / "path.json")["certificate"]["holds"]


@pytest.mark.parametrize(
    "n,batch,epochs,cycles", [(1000, 128, 20, 4), (100, 128, 3, 2), (257, 16, 1, 4)]
)
def test_neb_config_spreads_the_epochs_over_the_cycles(n, batch, epochs, cycles):
    import math

    from isthmus.paths.connect import neb_config

    cfg = neb_config(n, epochs=epochs, batch_size=batch, cycles=cycles)
    per_epoch = math.ceil(n / min(batch, n))
    assert cfg.cycles == cycles and cfg.steps * cycles >= epochs * per_epoch
    assert (cfg.steps - 1) * cycles < epochs * per_epoch  # the fewest steps that cover the budget
