"""Kill tests: a command SIGKILLed between any two of its file writes (and at a random moment)
and then rerun with --resume (a command without a checkpoint, the counterexample: rerun, with
--overwrite over a half-written folder) ends with exactly the files of an uninterrupted run, bit
for bit, or refuses with a clear error; it never exits 0 with other results.

The kills are real: the command runs as a subprocess with `ISTHMUS_CRASH_AFTER_WRITES=N`
(`io.CRASH_AFTER_WRITES`), which makes the process SIGKILL itself right after its N-th write:
between a checkpoint and the next one, between a run's weights and its config, between the two
files of a result.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from isthmus.cli import main
from isthmus.io import CRASH_AFTER_WRITES, load_tensors

pytestmark = pytest.mark.e2e

EXE = [sys.executable, "-c", "import sys; from isthmus.cli import main; sys.exit(main())"]


def _run(argv: list[str], crash: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(CRASH_AFTER_WRITES, None)
    if crash is not None:
        env[CRASH_AFTER_WRITES] = str(crash)
    return subprocess.run([*EXE, *argv], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill")
    base = ["train", "--data", "digits", "--depth", "3", "--width", "8", "--epochs", "1"]
    for s in (0, 1):
        assert main([*base, "--seed", str(s), "--out", str(root / f"r{s}")]) == 0
    return root


def _same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_tensors(a), load_tensors(b)
    import torch

    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _both(*jobs):
    """Run independent jobs two at a time (each is mostly a subprocess's start-up: CI has two
    cores); their exceptions propagate."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return [f.result() for f in [pool.submit(j) for j in jobs]]


def _kill_and_resume(argv, out: Path, reference: Path, artifact: str, kills) -> list[str]:
    """The uninterrupted run into `reference` and, for every kill point (two at a time): run
    with the crash, resume until done; then compare `artifact` with the reference's."""

    def uninterrupted() -> None:
        done = _run([*argv, "--out", str(reference)])
        assert done.returncode == 0, done.stderr

    def one(k: int) -> str:
        args = [*argv, "--out", str(out.parent / f"{out.name}_k{k}")]
        first = _run(args, crash=k)
        if first.returncode == 0:  # the run needed fewer than k writes
            return f"{k}: finished"
        assert first.returncode == -signal.SIGKILL, first.stderr
        again = _run([*args, "--resume"])
        if again.returncode == 2:  # a clear refusal is allowed, a wrong result is not
            assert "error:" in again.stderr and "Traceback" not in again.stderr
            return f"{k}: refused ({again.stderr.strip().splitlines()[-1][:80]})"
        assert again.returncode == 0, again.stderr
        return f"{k}: resumed"

    seen = _both(uninterrupted, *[lambda k=k: one(k) for k in kills])[1:]
    for k, what in zip(kills, seen, strict=True):
        if "refused" not in what:
            target = out.parent / f"{out.name}_k{k}" / artifact
            assert _same_tensors(target, reference / artifact), f"kill after write {k}"
    return seen


CASES = {
    "train": (
        ["train", "--data", "digits", "--depth", "3", "--width", "8", "--epochs", "3"],
        "model.safetensors",
        (1, 2, 3, 4, 5, 7, 9),
    ),
    "bezier": (
        ["connect", "{r0}", "{r1}", "--method", "bezier", "--epochs", "3", "--points", "5"],
        "path.safetensors",
        (1, 2, 3),
    ),
    "neb": (
        [
            "connect",
            "{r0}",
            "{r1}",
            "--method",
            "neb",
            "--cycles",
            "2",
            "--epochs",
            "2",
            "--points",
            "5",
        ],
        "path.safetensors",
        (1, 2),
    ),  # fmt: skip
    "orthogonal": (
        [
            "connect",
            "{r0}",
            "{r1}",
            "--method",
            "orthogonal",
            "--depth",
            "2",
            "--epochs",
            "1",
            "--points",
            "5",
        ],
        "path.safetensors",
        (1, 2),
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_killed_between_writes_resumes_bit_identically(runs, tmp_path, name):
    template, artifact, kills = CASES[name]
    argv = [a.format(r0=runs / "r0", r1=runs / "r1") for a in template]
    seen = _kill_and_resume(argv, tmp_path / "o", tmp_path / "ref", artifact, kills)
    assert any(s.endswith("resumed") for s in seen), seen  # the kills did interrupt something


def test_surface_and_stability_resume_after_kills(runs, tmp_path):
    import json

    sargv = ["surface", "--around", str(runs / "r0"), "--grid", "4", "--chunk", "4"]
    dargv = ["stability", str(runs / "r0"), "--draws", "4", "--swaps", "4", "--curve-draws", "0"]

    def surface() -> None:
        ref = tmp_path / "sref"
        assert _run([*sargv, "--out", str(ref)]).returncode == 0
        want = json.loads((ref / "surface.json").read_text())
        for k in (1, 2):
            out = tmp_path / f"s{k}"
            assert _run([*sargv, "--out", str(out)], crash=k).returncode == -signal.SIGKILL
            again = _run([*sargv, "--out", str(out), "--resume"])
            assert again.returncode in (0, 2), again.stderr
            if again.returncode == 0:
                got = json.loads((out / "surface.json").read_text())
                assert got["train_loss"] == want["train_loss"]

    def stability() -> None:
        ref = tmp_path / "dref"
        assert _run([*dargv, "--out", str(ref)]).returncode == 0
        want = json.loads((ref / "stability.json").read_text())
        out = tmp_path / "d1"
        assert _run([*dargv, "--out", str(out)], crash=1).returncode == -signal.SIGKILL
        again = _run([*dargv, "--out", str(out), "--resume"])
        assert again.returncode == 0, again.stderr
        got = json.loads((out / "stability.json").read_text())
        assert got["epsilon"] == want["epsilon"]
        assert got["by_start_layer"] == want["by_start_layer"]

    _both(surface, stability)


def test_training_killed_at_a_random_moment_resumes_bit_identically(runs, tmp_path):
    argv = ["train", "--data", "digits", "--depth", "3", "--width", "16", "--epochs", "8"]
    ref = tmp_path / "ref"
    assert _run([*argv, "--out", str(ref)]).returncode == 0
    rng = random.Random(0)
    out = tmp_path / "o"
    p = subprocess.Popen([*EXE, *argv, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(2.5, 4.0))  # past start-up, inside training
    p.send_signal(signal.SIGKILL)
    p.wait()
    resume = _run([*argv, "--out", str(out), "--resume"])
    if resume.returncode == 2:  # killed before the first checkpoint: a clear refusal
        assert "no training checkpoint" in resume.stderr or "--resume" in resume.stderr
        return
    assert resume.returncode == 0, resume.stderr
    assert _same_tensors(out / "model.safetensors", ref / "model.safetensors")


def _killed_at_random(argv: list[str], rng: random.Random, lo: float, hi: float) -> None:
    """Start `argv` and SIGKILL it after a random delay in [lo, hi] s (it may finish first)."""
    p = subprocess.Popen([*EXE, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(rng.uniform(lo, hi))
    p.send_signal(signal.SIGKILL)
    p.communicate()


def test_tree_killed_between_writes_and_at_random_resumes_bit_identically(runs, tmp_path):
    """tree.json is the tree's checkpoint (rewritten after every pair): a kill after the first
    pair, after the final write, or at a random moment resumes to the same file, byte for byte."""
    r2 = runs / "r2"
    if not r2.exists():
        base = ["train", "--data", "digits", "--depth", "3", "--width", "8", "--epochs", "1"]
        assert main([*base, "--seed", "2", "--out", str(r2)]) == 0
    argv = ["tree", *(str(runs / f"r{s}") for s in (0, 1, 2)), "--method", "neb"]
    argv += ["--cycles", "1", "--epochs", "1", "--pivots", "1", "--points", "3"]
    ref = tmp_path / "ref"  # the reference and the resumes run in this process (only kills need
    assert main([*argv, "--out", str(ref)]) == 0  # a process of their own)
    want = (ref / "tree.json").read_bytes()
    for k in (1, 4):  # after the first of three pairs; after the final tree.json, before the figure
        out = tmp_path / f"k{k}"
        assert _run([*argv, "--out", str(out)], crash=k).returncode == -signal.SIGKILL
        assert main([*argv, "--out", str(out), "--resume"]) == 0
        assert (out / "tree.json").read_bytes() == want, f"kill after write {k}"
    out = tmp_path / "random"
    _killed_at_random([*argv, "--out", str(out)], random.Random(1), 2.0, 5.0)
    code = main([*argv, "--out", str(out), "--resume"])
    if code == 2:  # killed before the first pair was written: a clear refusal
        assert not (out / "tree.json").exists()
        return
    assert code == 0
    assert (out / "tree.json").read_bytes() == want


def test_counterexample_killed_between_writes_and_at_random_reruns_identically(tmp_path, capsys):
    """counterexample has no checkpoint (it takes seconds): after a kill, rerunning either
    refuses the half-written folder clearly or, with --overwrite, writes the same file."""
    argv = ["counterexample", "--width", "2", "--epochs", "5", "--steps", "5"]
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0
    want = (ref / "counterexample.json").read_bytes()
    out = tmp_path / "k1"  # killed between counterexample.json and its figure
    assert _run([*argv, "--out", str(out)], crash=1).returncode == -signal.SIGKILL
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "counterexample.json").read_bytes() == want  # what was written is intact
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert (out / "counterexample.json").read_bytes() == want
    out = tmp_path / "random"
    _killed_at_random([*argv, "--out", str(out)], random.Random(2), 1.0, 4.0)
    code = main([*argv, "--out", str(out)])
    if code == 2:  # it had written a file: refused without --overwrite
        assert "--overwrite" in capsys.readouterr().err
        code = main([*argv, "--out", str(out), "--overwrite"])
    assert code == 0
    assert (out / "counterexample.json").read_bytes() == want
