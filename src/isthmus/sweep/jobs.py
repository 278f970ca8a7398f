"""One sweep job, run in a worker process (a local pool's or a Ray task's): the library call
behind the matching command, its files under OUT/jobs/<job id>, and one record of how it went.

A job works in OUT/jobs/<id>.partial (train and curve fits checkpoint there every epoch, so a
killed job continues on the next run), writes done.json there last and then renames the folder
to OUT/jobs/<id>: a job folder exists only when the job finished. A job that raises writes
OUT/jobs/<id>.failed.json (its error, traceback and attempts) instead; `run_job` never raises for
a job's own failure, so a Ray task or pool worker returns its record either way.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import IsthmusError
from ..io import inputs_record, load_run, load_runs, read_json, write_json
from .spec import configs

DONE_FILE = "done.json"
JOBS_DIR = "jobs"


def job_dir(out: str | Path, job_id: str) -> Path:
    return Path(out) / JOBS_DIR / job_id


def failed_file(out: str | Path, job_id: str) -> Path:
    d = job_dir(out, job_id)
    return d.with_name(d.name + ".failed.json")


def partial_dir(out: str | Path, job_id: str) -> Path:
    d = job_dir(out, job_id)
    return d.with_name(d.name + ".partial")


@lru_cache(maxsize=2)
def _data(name: str, root: str | None, seed: int, device: str):
    from ..data import load

    return load(name, root=root, seed=seed, device=device)


def _device(job: dict) -> str:
    if job["num_gpus"] > 0:
        if not torch.cuda.is_available():
            raise IsthmusError(
                f"job {job['id']} asks for num_gpus = {job['num_gpus']} but this worker has no "
                "CUDA device; set num_gpus = 0 or run on GPU nodes"
            )
        return "cuda"
    return "cpu"


def _train(job: dict, out: Path, work: Path, data, data_spec: dict) -> list[dict]:
    from ..study import train_points

    points = [configs(s, data.input_shape, data.num_classes) for s in job["settings"]]
    resume = any(work.rglob("state.safetensors"))  # a killed run of this job: continue it
    runs = train_points(
        points, data, job["seeds"], out=work, resume=resume, data_spec=data_spec, progress=False
    )
    final = job_dir(out, job["id"]).relative_to(out)
    rows = []
    for r in runs:
        run = final / Path(r["run"]).relative_to(work)
        m = r["metrics"]
        values = job["values"][r["point"]]  # the index into this job's points
        rows.append(_row(job, values, r["seed"], run) | {k: m[k] for k in METRICS["train"]})
    return rows


def _connect(job: dict, out: Path, work: Path, data) -> list[dict]:
    from ..paths import FitConfig, connect, save_path
    from ..paths.connect import NEB_EPOCHS, NEB_LR, NEB_OPTIMIZER, neb_config, orthogonal_config

    s, seed = job["settings"], job["seed"]
    a, b = load_runs([out / i["run"] for i in job["inputs"]], data.x_train.device)
    pb = b.params
    if s["align"] != "none":
        from ..align import align

        pb = align(a.model, a.params, pb, s["align"], data=data, seed=seed).params
    fit = neb = ortho = None
    n, where = len(data.x_train), f"[[connect]] {job['group']!r}"
    if s["method"] in ("chain", "bezier"):
        d = FitConfig()
        fit = FitConfig(
            epochs=s["epochs"] or d.epochs, optimizer=s["optimizer"] or d.optimizer,
            lr=s["lr"] or d.lr, batch_size=s["batch_size"], samples=s["samples"], l2=s["l2"],
        )  # fmt: skip
        fit.validate(where)
    elif s["method"] == "neb":
        neb = neb_config(
            n, epochs=s["epochs"] or NEB_EPOCHS, batch_size=s["batch_size"], pivots=s["pivots"],
            cycles=s["cycles"], optimizer=s["optimizer"] or NEB_OPTIMIZER, lr=s["lr"] or NEB_LR,
            source=where,
        )  # fmt: skip
    elif s["method"] == "orthogonal":
        ortho = orthogonal_config(
            n, epochs=s["epochs"], batch_size=s["batch_size"], depth=s["depth"],
            tolerance=s["tolerance"], optimizer=s["optimizer"], lr=s["lr"], source=where,
        )  # fmt: skip
    ckpt = work / ".checkpoint"
    con = connect(
        a.model, a.params, pb, data, s["method"], bends=s["bends"], fit=fit, neb=neb,
        orthogonal=ortho, neb_batch_size=s["batch_size"], points=s["points"], seed=seed,
        checkpoint=ckpt, resume=ckpt.is_dir() and any(ckpt.iterdir()), progress=False,
    )  # fmt: skip
    runs = [i["run"] for i in job["inputs"]]
    save_path(work, con.path, replace(con.result, extra={**con.result.extra, "runs": runs}))
    bar, line = con.result.barrier, con.line.barrier
    metrics = {
        "barrier": bar["train_loss"],
        "barrier_vs_mean": bar["train_loss_vs_mean"],
        "test_barrier": bar["test_loss"],
        "t_max": bar["t_max"],
        "line_barrier": line["train_loss"],
    }
    return [_row(job, job["values"], seed, job_dir(out, job["id"]).relative_to(out)) | metrics]


def _stability(job: dict, out: Path, work: Path, data) -> list[dict]:
    from ..stability import dropout_stability, noise_stability, save_stability

    s, seed, path = job["settings"], job["seed"], out / job["inputs"][0]["run"]
    run = load_run(path, data.x_train.device)
    if s["kind"] == "dropout":
        ckpt = work / ".checkpoint" / "dropout_search.json"
        res = dropout_stability(
            run.model, run.params, data, strategy=s["strategy"], draws=s["draws"], seed=seed,
            fit_r=s["fit_r"], swaps=s["swaps"], batch_size=s["batch_size"], checkpoint=ckpt,
            resume=ckpt.exists(), progress=False,
        )  # fmt: skip
    else:
        res = noise_stability(
            run.model, run.params, data, n_examples=s["examples"],
            n_proj=s["projections"] or None, seed=seed, noise_scale=s["noise_scale"],
            batch_size=s["batch_size"], progress=False,
        )  # fmt: skip
    save_stability(work, res, inputs_record([(path, run.params)], run.config["data"]))
    row = _row(job, job["values"], seed, job_dir(out, job["id"]).relative_to(out))
    return [row | {"epsilon": res.epsilon, "loss": res.loss}]


def _hessian(job: dict, out: Path, work: Path, data) -> list[dict]:
    from ..curvature import summarize

    s, seed, path = job["settings"], job["seed"], out / job["inputs"][0]["run"]
    run = load_run(path, data.x_train.device)
    res = summarize(
        run.model, run.params, data, top=s["top"], trace=s["trace"], examples=s["examples"],
        probes=s["probes"], seed=seed,
    )  # fmt: skip
    doc = {"run": job["inputs"][0]["run"], "data": data.name, "seed": seed, **res.to_json()}
    write_json(work / "hessian.json", doc)
    tr = res.trace
    metrics = {
        "top_eigenvalue": res.eigenvalues[0],
        "trace": tr.estimate if tr is not None else None,
        "trace_stderr": tr.stderr if tr is not None else None,
    }
    return [_row(job, job["values"], seed, job_dir(out, job["id"]).relative_to(out)) | metrics]


RUNNERS = {"train": _train, "connect": _connect, "stability": _stability, "hessian": _hessian}
METRICS = {  # the result columns of each kind (docs/sweeps.md); the first is the one plotted
    "train": ("test_acc", "test_loss", "train_loss", "train_acc"),
    "connect": ("barrier", "barrier_vs_mean", "test_barrier", "t_max", "line_barrier"),
    "stability": ("epsilon", "loss"),
    "hessian": ("top_eigenvalue", "trace", "trace_stderr"),
}


def _row(job: dict, values: dict, seed: int, run: Path) -> dict:
    """The columns every row has, then the point's varying settings and (for jobs that measure
    trained nets) which net(s) and their train point's settings, prefixed "net."."""
    from .spec import label

    row = {"group": job["group"], "kind": job["kind"], "job": job["id"], "point": label(values)}
    row |= {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in values.items()}
    row["seed"] = seed
    if "inputs" in job:
        first = job["inputs"][0]
        row["net_group"], row["net_point"] = first["group"], first["label"]
        row["net_seeds"] = "-".join(str(i["seed"]) for i in job["inputs"])
        row |= {f"net.{k}": v for k, v in first["values"].items()}
    return row | {"run": str(run)}


def same_job(a: dict, b: dict | None) -> bool:
    """The same work (what resources a job gets may change between runs)."""

    def key(j: dict) -> str:
        j = {k: v for k, v in j.items() if k not in ("num_cpus", "num_gpus")}
        return json.dumps(json.loads(json.dumps(j)), sort_keys=True)

    return b is not None and key(a) == key(b)


def _planned(work: Path) -> dict | None:
    """The job a partial folder was started for (None when unknown)."""
    try:
        return read_json(work / "job.json")
    except (IsthmusError, OSError):
        return None


def run_job(job: dict, out: str, data_spec: dict) -> dict:
    """Run `job` here and return its record ({"status": "done", "rows", ...} or {"status":
    "failed", "error", ...}), also written under `out` (see the module docstring). Torch gets
    the job's CPUs as threads (a pool worker inherits the machine's count, a Ray task the
    environment Ray sets: explicit either way)."""
    torch.set_num_threads(max(1, int(job["num_cpus"])))
    out_p, final, work = Path(out), job_dir(out, job["id"]), partial_dir(out, job["id"])
    fail = failed_file(out, job["id"])
    attempts = 1 + (read_json(fail).get("attempts", 0) if fail.exists() else 0)
    start = time.perf_counter()
    try:
        if (final / DONE_FILE).exists():  # finished meanwhile (a retried task): keep it
            return read_json(final / DONE_FILE)
        if work.is_dir() and not same_job(job, _planned(work)):
            shutil.rmtree(work)  # left by other settings under this id: not ours to continue
        work.mkdir(parents=True, exist_ok=True)
        write_json(work / "job.json", job)
        data = _data(data_spec["name"], data_spec["root"], data_spec["seed"], _device(job))
        runner = RUNNERS[job["kind"]]
        args = (data, data_spec) if job["kind"] == "train" else (data,)
        rows = runner(job, out_p, work, *args)
        record = {"status": "done", "job": job, "rows": rows, "error": None}
        record |= {"duration": time.perf_counter() - start, "attempts": attempts}
        write_json(work / DONE_FILE, record)
        os.rename(work, final)  # the job's folder appears whole, or not at all
        fail.unlink(missing_ok=True)
        return record
    except Exception as e:  # noqa: BLE001 - a job's failure is recorded, not raised
        record = {"status": "failed", "job": job, "rows": [], "error": f"{type(e).__name__}: {e}"}
        record |= {"traceback": traceback.format_exc(), "attempts": attempts}
        record["duration"] = time.perf_counter() - start
        write_json(fail, record)
        return record
