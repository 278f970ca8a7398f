"""The benchmark scripts still run (tiny sizes, `--quick`); their numbers are not asserted."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from isthmus.align import permute, random_permutation
from isthmus.models import ModelConfig, build_model, units_of
from isthmus.params import params_of

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


def test_eval_batch_benchmark_runs(tmp_path):
    _run("bench_eval_batch.py", "--out", str(tmp_path / "e.json"))
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [r["net"] for r in rows] == ["mlp 3x256", "cnn"]
    assert all(r["plan_batch"] >= 1 and r["ratio_all_over_plan"] > 0 for r in rows)


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


# ----------------------------------------------------------------------------- against rebasin


def _bench_rebasin(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("bench_rebasin")


def _distinct(params: dict, seed: int = 0) -> dict:
    """Fresh nets have equal norm scales (all ones): perturb every float tensor, as training does."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in params.items()}  # fmt: skip


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(kind="resnet", depth=1, width=1, batchnorm=True, input_shape=(40,)),
        ModelConfig(kind="transformer", depth=2, width=16, heads=4, patch=4, input_shape=(40,)),
    ],
    ids=["resnet-bn", "transformer"],
)
def test_rebasin_benchmark_reads_a_permutation_off_the_weights(monkeypatch, cfg):
    """The unit counting (which runs without rebasin): a permutation applied by isthmus is read
    back group by group, running statistics included; one tensor left behind breaks its group."""
    br = _bench_rebasin(monkeypatch)
    model = build_model(cfg)
    units = units_of(model)
    b = _distinct(params_of(model))
    perm = random_permutation(units, torch.Generator().manual_seed(3))
    after = permute(b, units, perm)
    groups = {g.name: g for g in br.count_units(b, after, units)}
    for name, p in perm.items():
        moved = int((p != torch.arange(len(p))).sum())
        assert groups[name].moved == moved
        assert groups[name].status == ("permuted" if moved else "in place")
        assert groups[name].stats_follow in (None, True)
    s = br.summary(list(groups.values()))
    assert s["units"] == sum(la.size for la in units.layers) and not s["broken"]
    assert s["fraction_optimised"] == 1.0
    # one slice left in B's order: only the groups acting on that tensor are broken
    name = "blocks.0.conv2.weight" if cfg.kind == "resnet" else "blocks.1.fc1.weight"
    broken = {**after, name: b[name]}
    counted = {g.name: g.status for g in br.count_units(b, broken, units)}
    touching = {la.name for la in units.layers
                for s in (*la.incoming, *la.outgoing) if s.name == name}  # fmt: skip
    assert {n for n, st in counted.items() if st == "broken"} == touching
    if cfg.batchnorm:  # running statistics left behind: the weights still count as permuted
        stats = {k: b[k] for k in b if k.endswith(("running_mean", "running_var"))}
        summ = br.summary(br.count_units(b, {**after, **stats}, units))
        assert summ["bn_statistics_follow"] is False and not summ["broken"]


def test_rebasin_benchmark_sees_dimensions_moved_across_heads(monkeypatch):
    """Queries and keys permuted alike but across heads (attention changes): the heads break."""
    br = _bench_rebasin(monkeypatch)
    cfg = ModelConfig(kind="transformer", depth=1, width=16, heads=4, patch=4, input_shape=(40,))
    units = units_of(build_model(cfg))
    b = _distinct(params_of(build_model(cfg)))
    p = torch.roll(torch.arange(16), 1)  # dimension k -> k + 1: every head loses one to the next
    after = dict(b)
    for m in ("q", "k"):
        for t in ("weight", "bias"):
            after[f"blocks.0.{m}.{t}"] = b[f"blocks.0.{m}.{t}"][p]
    broken = br.summary(br.count_units(b, after, units))["broken"]
    assert "blocks.0.qk" in broken and "blocks.0.heads" in broken and "stream" not in broken


def test_rebasin_benchmark_isthmus_side_runs(tmp_path):
    """Without rebasin (`--skip-rebasin`, as where it is not installed): isthmus's weight
    matching searches every group of both residual nets and the transformer and keeps B's
    function; the counting agrees with the permutation isthmus applied (checked in the script)."""
    out = _run("bench_rebasin.py", "--skip-rebasin", "--out", str(tmp_path / "r.json"))
    assert "pip install rebasin==0.0.47" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["rebasin"] is None
    rows = doc["rows"]
    assert [r["model"] for r in rows] == ["resnet-bn", "resnet-ln", "transformer"]
    for r in rows:
        assert "rebasin" not in r and "race" not in r
        ist = r["isthmus"]
        assert ist["same_function"] and ist["output_change"] < 1e-5
        assert ist["counts"]["fraction_optimised"] == 1.0 and not ist["counts"]["broken"]
        assert ist["objective"] >= r["before"]["objective"]
        assert math.isfinite(ist["barrier"]["train_loss"])
    kinds = rows[2]["isthmus"]["counts"]["by_kind"]
    assert {"residual stream", "attention heads", "head dimensions", "MLP hidden units"} <= set(
        kinds
    )


def test_rebasin_benchmark_says_how_to_install_rebasin():
    code = (
        "import runpy, sys; sys.modules['rebasin'] = None; "  # as if not installed
        f"sys.path.insert(0, {str(BENCH)!r}); sys.argv = ['bench_rebasin.py', '--quick']; "
        f"runpy.run_path({str(BENCH / 'bench_rebasin.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "pip install rebasin==0.0.47" in proc.stderr and "--skip-rebasin" in proc.stderr


def test_rebasin_benchmark_runs(tmp_path):
    """With rebasin installed (skipped otherwise; CI does not install it): both tools on the
    same pairs; a group the counting calls broken is exactly when B's function changed."""
    pytest.importorskip("rebasin", reason="rebasin not installed (pip install rebasin==0.0.47)")
    _run("bench_rebasin.py", "--race-always", "--out", str(tmp_path / "r.json"))
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    for r in rows:
        reb = r["rebasin"]
        assert bool(reb["counts"]["broken"]) == (not reb["same_function"])
        assert reb["counts"]["units"] == r["isthmus"]["counts"]["units"]
        assert r["rebasin_permutes_all"] == (
            reb["same_function"] and reb["counts"]["fraction_optimised"] == 1.0
        )
        race = r["race"]  # --race-always: timed everywhere
        assert race["isthmus"]["seconds"] > 0 and race["rebasin"]["seconds"] > 0
