"""Input records: every result file names the runs (path, sha256 of the weights) and the data it
was computed from, and every command that reads another command's result refuses one computed
for other nets, or one whose parts do not belong together, with a message naming the file, the
field and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from isthmus.cli import main
from isthmus.io import load_run
from isthmus.params import fingerprint

pytestmark = pytest.mark.e2e

TRAIN = ["train", "--data", "digits", "--depth", "2", "--width", "8", "--epochs", "1"]


def _ok(argv: list[str]) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def _refused(argv: list[str], capsys, *names: str) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err
    for n in names:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Three tiny runs, a Bezier path r0-r1 and a line r0-r2, a joining subspace of r0 and r1."""
    root = tmp_path_factory.mktemp("inputs")
    for s in (0, 1, 2):
        _ok([*TRAIN, "--seed", s, "--out", root / f"r{s}"])
    r0, r1, r2 = (root / f"r{s}" for s in (0, 1, 2))
    _ok(["connect", r0, r1, "--method", "bezier", "--epochs", "1", "--points", "3", "--out", root / "p01"])  # fmt: skip
    _ok(["connect", r0, r2, "--method", "linear", "--points", "3", "--out", root / "p02"])
    sub = ["subspace", "--connectors", "1", "--epochs", "1", "--eval-samples", "4"]
    sub += ["--edge-points", "3"]
    _ok([*sub, r0, r1, "--out", root / "s01"])
    _ok([*sub, r0, r2, "--out", root / "s02"])
    return root


def _sha(run: Path) -> str:
    return fingerprint(load_run(run).params)


def test_every_result_file_records_its_inputs(root, tmp_path):
    r0, r1, r2 = (root / f"r{s}" for s in (0, 1, 2))
    _ok(["surface", r0, r1, "--path", root / "p01", "--grid", "3", "--out", tmp_path / "surf"])
    _ok(["align", r0, r1, "--out", tmp_path / "al"])
    _ok(["hessian", r0, "--top", "1", "--out", tmp_path / "h"])
    _ok(["ensemble", r0, r1, "--path", root / "p01", "--subspace", root / "s01", "--members", "2", "--out", tmp_path / "e"])  # fmt: skip
    _ok(["tree", r0, r1, r2, "--method", "linear", "--points", "3", "--out", tmp_path / "t"])
    digits = {"name": "digits", "root": None, "seed": 0}
    files = {
        root / "p01" / "path.json": [r0, r1],
        root / "s01" / "subspace.json": [r0, r1],
        tmp_path / "surf" / "surface.json": [r0, r1],
        tmp_path / "al" / "align.json": [r0, r1],
        tmp_path / "h" / "hessian.json": [r0],
        tmp_path / "e" / "ensemble.json": [r0, r1],
        tmp_path / "t" / "tree.json": [r0, r1, r2],
    }
    for f, runs in files.items():
        rec = json.loads(f.read_text())["inputs"]
        assert [r["path"] for r in rec["runs"]] == [str(r) for r in runs], f
        assert [r["sha256"] for r in rec["runs"]] == [_sha(r) for r in runs], f
        assert rec["data"] == digits, f
    ens = json.loads((tmp_path / "e" / "ensemble.json").read_text())["inputs"]
    assert [r["path"] for r in ens["results"]] == [str(root / "p01"), str(root / "s01")]


def test_surface_refuses_a_path_of_other_nets(root, tmp_path, capsys):
    r0, r2 = root / "r0", root / "r2"
    argv = ["surface", r0, r2, "--path", root / "p01", "--grid", "3", "--out", tmp_path / "s"]
    _refused(argv, capsys, "p01/path.json", "inputs.runs[1].sha256", "r2")
    # three runs: the path must join two of them
    r1 = root / "r1"
    _ok(["surface", r2, r0, r1, "--path", root / "p01", "--grid", "3", "--out", tmp_path / "s3"])
    argv = ["surface", r1, r2, r1, "--path", root / "p02", "--grid", "3", "--out", tmp_path / "x"]
    _refused(argv, capsys, "p02/path.json", "inputs.runs")


def test_path_files_that_do_not_belong_together_or_lack_records_are_refused(root, tmp_path, capsys):
    r0, r1 = root / "r0", root / "r1"
    mixed = tmp_path / "mixed"
    shutil.copytree(root / "p01", mixed)
    shutil.copy(root / "p02" / "path.safetensors", mixed / "path.safetensors")
    argv = ["ensemble", "--path", mixed, "--members", "2", "--out", tmp_path / "e"]
    _refused(argv, capsys, "mixed/path.safetensors", "field 'files'", "isthmus connect")
    argv = ["surface", r0, r1, "--path", mixed, "--grid", "3", "--out", tmp_path / "s"]
    _refused(argv, capsys, "mixed/path.safetensors", "field 'files'")
    for field, named in (("inputs", "field 'inputs'"), ("files", "field 'files'")):
        old = tmp_path / f"old_{field}"
        shutil.copytree(root / "p01", old)
        doc = json.loads((old / "path.json").read_text())
        del doc[field]
        (old / "path.json").write_text(json.dumps(doc))
        argv = ["surface", r0, r1, "--path", old, "--grid", "3", "--out", tmp_path / f"s{field}"]
        _refused(argv, capsys, f"old_{field}/path.json", named, "re-create")


def test_ensemble_refuses_a_path_whose_runs_were_replaced(root, tmp_path, capsys):
    runs = tmp_path / "runs"
    for s in (0, 1):
        shutil.copytree(root / f"r{s}", runs / f"r{s}")
    _ok(["connect", runs / "r0", runs / "r1", "--method", "linear", "--points", "3", "--out", tmp_path / "p"])  # fmt: skip
    _ok(["ensemble", "--path", tmp_path / "p", "--members", "2", "--out", tmp_path / "e0"])
    _ok([*TRAIN, "--seed", "7", "--overwrite", "--out", runs / "r1"])  # r1 retrained in place
    argv = ["ensemble", "--path", tmp_path / "p", "--members", "2", "--out", tmp_path / "e1"]
    _refused(argv, capsys, "p/path.json", "inputs.runs[1].sha256", "r1")


def test_ensemble_refuses_subspace_files_that_do_not_belong_together(root, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(root / "s01", mixed)
    shutil.copy(root / "s02" / "subspace.safetensors", mixed / "subspace.safetensors")
    argv = ["ensemble", "--subspace", mixed, "--members", "2", "--out", tmp_path / "e"]
    _refused(argv, capsys, "mixed/subspace.safetensors", "field 'files'", "isthmus subspace")
    # a record edited to name other weights for a fixed vertex (the run it was made from)
    edited = tmp_path / "edited"
    shutil.copytree(root / "s01", edited)
    doc = json.loads((edited / "subspace.json").read_text())
    doc["inputs"]["runs"][1]["sha256"] = _sha(root / "r2")
    (edited / "subspace.json").write_text(json.dumps(doc))
    argv = ["ensemble", "--subspace", edited, "--members", "2", "--out", tmp_path / "e2"]
    _refused(argv, capsys, "edited/subspace.json", "inputs.runs[1].sha256", "fixed vertex 1")
    old = tmp_path / "old"
    shutil.copytree(root / "s01", old)
    doc = json.loads((old / "subspace.json").read_text())
    del doc["files"]
    (old / "subspace.json").write_text(json.dumps(doc))
    argv = ["ensemble", "--subspace", old, "--members", "2", "--out", tmp_path / "e3"]
    _refused(argv, capsys, "old/subspace.json", "field 'files'", "isthmus subspace")


def test_ensemble_of_a_subspace_uses_the_data_it_was_made_on(root, tmp_path):
    _ok(["ensemble", "--subspace", root / "s01", "--members", "2", "--out", tmp_path / "e"])
    doc = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert doc["inputs"]["data"]["name"] == "digits"


def test_tree_resume_with_other_weights_is_refused(root, tmp_path, capsys):
    runs = [tmp_path / f"r{s}" for s in (0, 1, 2)]
    for s, r in enumerate(runs):
        shutil.copytree(root / f"r{s}", r)
    argv = ["tree", *runs, "--method", "linear", "--points", "3", "--out", tmp_path / "t"]
    _ok(argv)
    _ok([*argv, "--resume"])  # the same weights: resumes (nothing left to do)
    _ok([*TRAIN, "--seed", "9", "--overwrite", "--out", runs[2]])
    _refused([*argv, "--resume"], capsys, "t/tree.json", "inputs.runs[2].sha256", "r2")
