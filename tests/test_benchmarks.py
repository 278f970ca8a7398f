"""The benchmark scripts still run (tiny sizes, `--quick`); their numbers are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # each script run takes 5-20 s
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_foundation_benchmark_runs():
    out = _run("bench_foundation.py")
    assert "(i) evaluate" in out and "(ii)" in out and "ratio" in out


def test_path_benchmark_runs(tmp_path):
    _run("bench_paths.py", "--models", "mlp,convfc", "--out", str(tmp_path / "b.json"))
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["mlp", "convfc"]
    assert all(r["max_abs_loss_difference"] < 1e-4 for r in rows)  # isthmus == the plain loop


def test_provable_and_stability_tables_run(tmp_path):
    _run("provable_paths.py", "--only", "mlp_dropout", "--out", str(tmp_path / "p"))
    pairs = json.loads((tmp_path / "p" / "provable_paths.json").read_text())["pairs"]
    assert pairs[0]["theorem1"]["holds"]
    _run("stability_table.py", "--out", str(tmp_path / "s"))
    rows = json.loads((tmp_path / "s" / "stability_table.json").read_text())["rows"]
    assert len(rows) == 4


def test_wedge_benchmark_runs():
    out = _run("bench_wedges.py")
    assert "ratio loop / isthmus" in out
    diff = float(out.split("end point difference| on the timed runs:")[1].split()[0])
    assert diff < 1e-8  # the population computes what the plain loop computes


def test_subspace_benchmark_runs(tmp_path):
    _run("bench_subspace.py", "--out", str(tmp_path / "s.json"))
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["mlp", "cnn"]
    assert all(r["max_abs_loss_difference"] < 1e-4 for r in rows)  # isthmus == the plain loop


def test_curvature_benchmark_runs(tmp_path):
    """Without pyhessian (as where it is not installed): isthmus's top-5 eigenvalues within 1% of
    the explicit Hessian's, the Lanczos reference equal to the explicit one, Hutchinson's trace
    near the exact trace, and the wedge sweep in the same run."""
    out = _run("bench_curvature.py", "--skip-pyhessian", "--out", str(tmp_path / "c.json"))
    assert "pip install --no-deps pyhessian" in out and "ratio loop / isthmus" in out
    (row,) = json.loads((tmp_path / "c.json").read_text())["rows"]
    ref = row["reference"]
    assert ref["method"].startswith("explicit float64 Hessian")
    assert ref["lanczos_vs_explicit"] < 1e-6
    (eig,) = row["eigen"]
    assert eig["tool"] == "isthmus" and eig["max_rel_error"] <= 0.01
    (tr,) = row["trace"]
    assert abs(tr["estimate"] - ref["trace"]) < 4 * tr["stderr"]


REFERENCE = os.environ.get("ISTHMUS_REFERENCE_CHECKOUT", "")


@pytest.mark.skipif(
    not (REFERENCE and (Path(REFERENCE) / "curves.py").is_file()),
    reason="no dnn-mode-connectivity checkout (set ISTHMUS_REFERENCE_CHECKOUT; tests never fetch)",
)
def test_reference_race_runs(tmp_path):
    """The reference's own code (edited copy) and isthmus compute the same path losses."""
    before = sorted(p.name for p in Path(REFERENCE).rglob("*"))
    out = _run(
        "bench_paths.py", "--reference", REFERENCE, "--budgets", "32,256",
        "--out", str(tmp_path / "r.json"),
    )  # fmt: skip
    race = json.loads((tmp_path / "r.json").read_text())["race"]
    assert race["max_abs_loss_difference"] < 1e-5
    # the speed/memory curve: isthmus at eval_plan's sizes for each budget (64 quick images)
    assert [(c["budget_mib"], c["batch_size"], c["chunk"]) for c in race["curve"]] == [
        (32, 22, 1),
        (256, 64, 4),
    ]
    for tool in ("reference", "isthmus"):
        assert race[tool]["seconds_per_point"] > 0 and race[tool]["peak_rss_bytes_eval"] > 0
    assert "peak memory (RSS)" in out
    assert sorted(p.name for p in Path(REFERENCE).rglob("*")) == before  # the checkout untouched


def test_gpu_script_dry_run(tmp_path):
    """benchmarks/gpu.sh end to end on CPU at tiny sizes: every row group, one table, JSON rows."""
    out_json = tmp_path / "gpu.json"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), "--dry-run", "--out", str(out_json)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out_json.read_text())["rows"]
    names = [r["row"] for r in rows]
    for want in ("eval-mlp16", "population", "path-convfc", "path-vgg16bn", "bezier-convfc",
                 "bezier-vgg16bn", "curvature-eigen", "curvature-trace", "subspace-mlp-epoch"):  # fmt: skip
        assert want in names
    assert all(r["baseline_s"] > 0 and r["isthmus_s"] > 0 for r in rows)
    assert proc.stdout.count("| row | work |") == 1  # one table
    paths = [r for r in rows if r["row"].startswith("path-")]
    assert all(float(r["note"].split()[-1]) < 1e-4 for r in paths)  # isthmus == the plain loop
