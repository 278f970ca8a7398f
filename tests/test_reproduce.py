"""`isthmus reproduce`: the smoke size of both papers writes a verdict for every claim documented
in docs/reproduction.md, a report whose figures decode in headless Chromium with no console
errors, and resumes without recomputing; the verdict rules and the step runner on their own."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from browser import browser, load  # noqa: F401 - the fixture

from isthmus.cli import main
from isthmus.errors import IsthmusError
from isthmus.experiments.reproduce import PAPERS, reproduce
from isthmus.experiments.reproduce.common import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Steps,
    verdict,
)
from isthmus.experiments.reproduce.kuditipudi2019 import _claim_k1, _claim_k2

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproduction.md"
VERDICTS = {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE}
KEYS = {
    "kuditipudi2019": ["K1_mlp", "K1_cnn", "K2_mlp", "K3a_mlp", "K3b_mlp", "K4"],
    "fort2019": ["F1", "F2", "F3", "F4", "F5", "F6", "F7"],
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict[str, Path]:
    """Both papers at the smoke size, through the CLI (one thread: tiny nets)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for paper in PAPERS:
            folder = tmp_path_factory.mktemp(paper) / "out"
            assert main(["reproduce", paper, "--smoke", "--seed", "0", "--out", str(folder)]) == 0
            out[paper] = folder
    finally:
        torch.set_num_threads(n)
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("paper", list(PAPERS))
def test_smoke_writes_a_verdict_for_every_documented_claim(smoke, paper):
    doc = json.loads((smoke[paper] / "results.json").read_text())
    assert [c["key"] for c in doc["claims"]] == KEYS[paper]
    text = DOC.read_text()
    for c in doc["claims"]:
        assert c["verdict"] in VERDICTS
        assert c["claim"] and c["statistic"] and c["threshold"] and c["shown"]
        assert c["seconds"] >= 0 and c["steps"] and set(c["steps"]) <= set(doc["steps"])
        assert set(c["settings"]) == set(c["steps"])  # the seeds and sizes it comes from
        assert f"**{c['key']}**" in text, f"{c['key']} is not defined in docs/reproduction.md"
    assert doc["command"][:3] == ["isthmus", "reproduce", paper]
    assert doc["size"] == "smoke" and doc["settings"]["seed"] == 0
    for name, step in doc["steps"].items():  # every step's result and figures are on disk
        rec = json.loads((smoke[paper] / step["folder"] / "result.json").read_text())
        assert rec["step"] == name
        for f in rec["result"].get("figures", []):
            assert (smoke[paper] / f["file"]).stat().st_size > 0


@pytest.mark.e2e
@pytest.mark.parametrize("paper", list(PAPERS))
def test_smoke_report_renders_alone_in_a_browser(smoke, paper, browser, tmp_path):  # noqa: F811
    figures = sorted(smoke[paper].glob("steps/*/*.png"))
    html = (smoke[paper] / "report.html").read_text()
    first = html.index("<table>")
    assert html.index("Claims and verdicts") > first  # the claim table comes first
    assert html.index("verdict") < html.index("<h2>")
    table = html[first : html.index("</table>")]
    for key in KEYS[paper]:  # one row per claim, led by its id
        assert f"<tr><td>{key}</td>" in table
    for page in (smoke[paper] / "report.html", shutil.copy(smoke[paper] / "report.html", tmp_path)):
        got = load(browser, Path(page))
        assert got["errors"] == [], got["errors"]
        assert len(got["images"]) == len(figures) > 0
        assert all(i["complete"] and i["width"] > 0 for i in got["images"]), got["images"]
        assert f"isthmus reproduce {paper} --smoke" in got["text"]


@pytest.mark.e2e
def test_resume_skips_finished_steps_and_gives_the_same_claims(smoke, tmp_path, one_thread):
    src = smoke["kuditipudi2019"]
    before = json.loads((src / "results.json").read_text())
    folder = tmp_path / "k"
    shutil.copytree(src, folder)
    shutil.rmtree(folder / "steps" / "counterexample")  # as if interrupted before this step
    (folder / "report.html").unlink()
    argv = ["reproduce", "kuditipudi2019", "--smoke", "--out", str(folder)]
    assert main(argv) == 2  # a non-empty folder needs --resume (or --overwrite)
    assert main([*argv, "--resume"]) == 0
    after = json.loads((folder / "results.json").read_text())
    resumed = {k for k, s in after["steps"].items() if s["resumed"]}
    assert resumed == set(after["steps"]) - {"counterexample"}
    assert [c["value"] for c in after["claims"]] == [c["value"] for c in before["claims"]]
    assert [c["verdict"] for c in after["claims"]] == [c["verdict"] for c in before["claims"]]
    assert main([*argv, "--resume", "--seed", "1"]) == 2  # other settings: refused


def test_a_step_resumed_under_other_settings_is_refused(tmp_path):
    calls = []

    def fn(folder: Path) -> dict:
        calls.append(folder)
        return {"x": 1.5}

    st = Steps(tmp_path, False, {"seed": 0}, progress=False)
    assert st.run("a", fn, {"n": 2}) == {"x": 1.5}
    assert st.run("a", fn, {"n": 2}) == {"x": 1.5} and len(calls) == 1  # once per run
    again = Steps(tmp_path, True, {"seed": 0}, progress=False)
    assert again.run("a", fn, {"n": 2}) == {"x": 1.5} and len(calls) == 1
    with pytest.raises(IsthmusError, match="another reproduction step a"):
        Steps(tmp_path, True, {"seed": 0}, progress=False).run("a", fn, {"n": 3})


def test_verdict_rules():
    assert verdict(True, False) == REPRODUCED
    assert verdict(False, True) == NOT_REPRODUCED
    assert verdict(False, False) == INCONCLUSIVE

    def k1(d, p):
        st = {"dropout": [{"epsilon": e} for e in d], "plain": [{"epsilon": e} for e in p]}
        return _claim_k1("mlp", st).verdict

    assert k1([0.01, 0.02], [0.3, 0.5]) == REPRODUCED  # far smaller, every pair ordered
    assert k1([0.2, 0.3], [0.3, 0.5]) == INCONCLUSIVE  # smaller on average, not far
    assert k1([0.4, 0.6], [0.3, 0.5]) == NOT_REPRODUCED
    assert k1([-0.01, 0.0], [-0.02, 0.0]) == INCONCLUSIVE  # plain nets are stable too
    t1 = {
        "certificate": {"holds": True, "bound": 0.5, "max_loss_on_path": 0.4, "segment_count": 7},
        "line": {"max_loss": 0.9, "train_loss": 0.4},
    }
    assert _claim_k2("mlp", t1).verdict == REPRODUCED
    t1["line"]["max_loss"] = 0.45
    assert _claim_k2("mlp", t1).verdict == INCONCLUSIVE
    t1["certificate"]["holds"] = False
    assert _claim_k2("mlp", t1).verdict == NOT_REPRODUCED


def test_unknown_paper_size_or_missing_root_is_refused(tmp_path):
    with pytest.raises(IsthmusError, match="unknown paper"):
        reproduce("nobody2020", tmp_path / "a")
    with pytest.raises(IsthmusError, match="unknown size"):
        reproduce("fort2019", tmp_path / "b", size="huge")
    with pytest.raises(IsthmusError, match="--root"):
        reproduce("fort2019", tmp_path / "c", size="smoke", data="mnist")


def test_the_doc_defines_every_threshold_the_code_uses():
    """docs/reproduction.md is the advance statement: its thresholds match the code's."""
    from isthmus.experiments.reproduce import fort2019 as f
    from isthmus.experiments.reproduce import kuditipudi2019 as k

    text = DOC.read_text()
    for v in (
        k.RATIO,
        *k.NOISE,
        *k.T2_BARRIER,
        k.CX_FACTOR,
        *f.LANDED,
        f.TUNNEL,
        *f.SUBSPACE,
        f.JOIN_EXCESS,
    ):
        assert re.search(rf"(?<![\d.]){re.escape(f'{v:g}')}(?![\d])", text), v


@pytest.mark.e2e
@pytest.mark.parametrize("crash, finished", [(6, False), (30, True)])
def test_a_killed_run_resumes_to_the_same_claims(smoke, tmp_path, crash, finished):
    """SIGKILL after the crash-th file write (`io.CRASH_AFTER_WRITES`), then --resume."""
    import os
    import subprocess
    import sys

    from isthmus.io import CRASH_AFTER_WRITES

    out = tmp_path / "k"
    argv = [
        sys.executable,
        "-c",
        "import sys; from isthmus.cli import main; sys.exit(main())",
        "reproduce",
        "kuditipudi2019",
        "--smoke",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", CRASH_AFTER_WRITES: str(crash)}
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr  # it really died mid-run
    assert not (out / "results.json").exists()
    done_before = {p.parent.name for p in out.glob("steps/*/result.json")}
    assert bool(done_before) == finished  # mid-training (6) or after some steps (30)
    env.pop(CRASH_AFTER_WRITES)
    done = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads((out / "results.json").read_text())
    ref = json.loads((smoke["kuditipudi2019"] / "results.json").read_text())
    assert {k for k, s in got["steps"].items() if s["resumed"]} == done_before
    assert [c["verdict"] for c in got["claims"]] == [c["verdict"] for c in ref["claims"]]
    nan = float("nan")
    values = [nan if c["value"] is None else c["value"] for c in ref["claims"]]
    assert [nan if c["value"] is None else c["value"] for c in got["claims"]] == pytest.approx(
        values, rel=1e-9, nan_ok=True
    )


@pytest.mark.e2e
def test_local_mnist_files_run_through_2d_cnns(tmp_path, one_thread):
    """--data mnist --root DIR: the same claims on image data (random images: shapes only)."""
    import numpy as np

    from isthmus.data import write_idx

    rng = np.random.default_rng(0)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")  # fmt: skip
    for name, n, image in zip(names, (64, 64, 32, 32), (True, False, True, False), strict=True):
        shape = (n, 28, 28) if image else (n,)
        write_idx(tmp_path / name, rng.integers(0, 256 if image else 10, shape, dtype=np.uint8))
    out = tmp_path / "out"
    argv = ["reproduce", "kuditipudi2019", "--smoke", "--data", "mnist", "--root", str(tmp_path)]
    assert main([*argv, "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [c["key"] for c in doc["claims"]] == KEYS["kuditipudi2019"]
    cnn = doc["steps"]["train_cnn_dropout"]["settings"]["model"]
    assert cnn["input_shape"] == [1, 28, 28] and doc["settings"]["data"] == "mnist"


@pytest.mark.e2e
def test_overwrite_reruns_everything_and_reports_no_stale_step(smoke, tmp_path, one_thread):
    folder = tmp_path / "k"
    shutil.copytree(smoke["kuditipudi2019"], folder)
    (folder / "steps" / "theorem1_cnn").mkdir()  # a step only an earlier, larger run had
    (folder / "steps" / "theorem1_cnn" / "theorem1_cnn.png").write_bytes(b"old")
    argv = ["reproduce", "kuditipudi2019", "--smoke", "--seed", "1", "--out", str(folder)]
    assert main([*argv, "--overwrite"]) == 0
    doc = json.loads((folder / "results.json").read_text())
    assert not (folder / "steps" / "theorem1_cnn").exists()
    assert doc["settings"]["seed"] == 1 and not any(s["resumed"] for s in doc["steps"].values())
    assert "theorem1_cnn" not in (folder / "report.html").read_text()
