"""Running a sweep: which jobs still need to run, a backend to run them (a local process pool or
a Ray cluster), and the gathered results (docs/sweeps.md).

The driver decides, the workers compute: a job is finished when its folder exists
(`jobs.run_job` renames it into place last), so a rerun skips it, whichever machine ran it; a
failed job keeps its record and runs again only with `retry_failed`; a job whose input job failed
is "blocked". After every finished job the driver rewrites OUT/sweep.json; at the end it writes
OUT/results.csv, OUT/results.json and OUT/sweep.png.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from ..errors import IsthmusError
from ..io import atomic_write_bytes, read_json, write_json
from ..progress import bar
from ..version import __version__
from .jobs import DONE_FILE, JOBS_DIR, METRICS, failed_file, job_dir, run_job, same_job
from .spec import check_models, label, load_spec, plan

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did: every job's entry (as in sweep.json), the gathered rows, counts by
    status and the files written."""

    jobs: list[dict]
    rows: list[dict]
    counts: dict
    files: list[Path] = field(default_factory=list)


class LocalBackend:
    """A pool of `workers` spawned processes; a job takes ceil(num_cpus) of `workers` CPU slots
    (at most all of them), so jobs that ask for more CPUs run fewer at a time."""

    def __init__(self, workers: int | None):
        self.capacity = workers or os.cpu_count() or 1
        self.pool = ProcessPoolExecutor(self.capacity, mp_context=get_context("spawn"))
        self.owner: dict = {}  # future -> the pool that runs it

    def slots(self, job: dict) -> int:
        return min(self.capacity, max(1, math.ceil(job["num_cpus"])))

    def submit(self, job: dict, out: str, data: dict):
        f = self.pool.submit(run_job, job, out, data)
        self.owner[f] = self.pool
        return f

    def wait(self, handles: list) -> list[tuple[object, dict | None, str | None]]:
        done, _ = wait_futures(handles, return_when=FIRST_COMPLETED)
        results = []
        for f in done:
            try:
                results.append((f, f.result(), None))
            except BrokenProcessPool:  # every job of that pool ends here; it takes no more
                why = "its worker process died (killed, or out of memory)"
                results.append((f, None, why))
                if self.owner[f] is self.pool:
                    self.pool.shutdown(wait=False, cancel_futures=True)
                    self.pool = ProcessPoolExecutor(self.capacity, mp_context=get_context("spawn"))
            self.owner.pop(f, None)
        return results

    def close(self, wait: bool = True) -> None:
        """Without `wait` (an interrupted sweep) running jobs finish or die on their own."""
        self.pool.shutdown(wait=wait, cancel_futures=True)


class RayBackend:
    """Jobs as Ray tasks with the spec's num_cpus / num_gpus. `address` None starts a local
    instance with `workers` CPUs (all of this machine's by default) and stops it at the end;
    "auto" or "ray://host:10001" joins a running cluster, whose nodes need isthmus installed and
    OUT on shared storage at the same path (the tasks write their files there)."""

    capacity = math.inf  # Ray queues tasks until a node has their resources

    def __init__(self, address: str | None, workers: int | None):
        try:
            import ray
        except ImportError:
            raise IsthmusError(
                "--backend ray needs Ray, which is not installed; install it with "
                "pip install 'isthmus[ray]' (or use --backend local)"
            ) from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            # a Ray Client address (ray://) forwards only the arguments it knows: pass none
            # "local": a new instance here, even where RAY_ADDRESS names a cluster
            kw = {"address": "local", "num_cpus": workers or os.cpu_count()}
            kw = {"address": address} if address else kw | {"include_dashboard": False}
            if not address or "://" not in address:
                kw |= {"logging_level": "ERROR", "log_to_driver": False}
            try:
                ray.init(**kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise IsthmusError(
                    f"--address {address}: cannot connect to Ray ({e}); check the address "
                    "(auto, or ray://host:10001) and that the cluster runs"
                ) from None
        self.task = ray.remote(run_job)

    def slots(self, job: dict) -> int:
        return 1

    def submit(self, job: dict, out: str, data: dict):
        # Ray retries a task whose worker died (system failures, max_retries); a job's own
        # error is returned in its record, never raised, so it is recorded, not retried
        opts = {"num_cpus": job["num_cpus"], "num_gpus": job["num_gpus"], "name": job["id"]}
        return self.task.options(**opts).remote(job, out, data)

    def wait(self, handles: list) -> list[tuple[object, dict | None, str | None]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        results = []
        for ref in ready:
            try:
                results.append((ref, self.ray.get(ref), None))
            except self.ray.exceptions.RayError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                results.append((ref, None, f"Ray: {type(e).__name__}: {first}"))
        return results

    def close(self, wait: bool = True) -> None:
        if self.started:  # a cluster joined is left running (and our unfinished tasks end)
            self.ray.shutdown()


def _entry(job: dict, rec: dict | None, status: str) -> dict:
    """A job as sweep.json lists it."""
    rec = rec or {}
    return {
        "id": job["id"], "kind": job["kind"], "group": job["group"], "deps": job["deps"],
        "point": " | ".join(label(v) for v in job["values"]) if job["kind"] == "train"
        else label(job["values"]),
        "num_cpus": job["num_cpus"], "num_gpus": job["num_gpus"], "status": status,
        "result": rec.get("rows") if status in ("done", "skipped") else None,
        "error": rec.get("error"), "duration": rec.get("duration"), "attempts": rec.get("attempts", 0),
    }  # fmt: skip


def _csv(rows: list[dict]) -> bytes:
    cols: dict[str, None] = {}
    for r in rows:
        cols |= dict.fromkeys(r)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(cols), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in cols})
    return buf.getvalue().encode()


def _found(jobs: list[dict], out: Path, retry_failed: bool) -> tuple[dict, dict]:
    """Each job's status from its files in `out` ("skipped": finished before; "failed": kept
    unless `retry_failed`; else "pending") and the records read."""
    status, records = {}, {}
    for job in jobs:
        jid = job["id"]
        done, fail = job_dir(out, jid) / DONE_FILE, failed_file(out, jid)
        if done.exists():
            records[jid] = read_json(done)
            if not same_job(job, records[jid].get("job")):
                raise IsthmusError(
                    f"{done}: this job was run with other settings (the spec changed); rerun "
                    "with --overwrite to run every job again, or choose a new --out"
                )
            status[jid] = "skipped"
        elif fail.exists() and not retry_failed:
            records[jid], status[jid] = read_json(fail), "failed"
        else:
            status[jid] = "pending"
    return status, records


def _schedule(jobs, runner, out: str, data: dict, status, records, pbar, on_change) -> None:
    """Submit every pending job whose inputs have finished while the backend has room, record
    each result as it comes (a dead worker's job here), until nothing runs; jobs whose inputs
    failed become "blocked"."""
    by_id = {j["id"]: j for j in jobs}
    running: dict[object, tuple[str, int]] = {}
    used = 0
    while True:
        for job in jobs:  # in order: a job's inputs come before it
            deps = [status[x] for x in job["deps"]]
            if status[job["id"]] == "pending" and any(s in ("failed", "blocked") for s in deps):
                status[job["id"]] = "blocked"
                pbar.update(1)
        for job in jobs:
            jid, need = job["id"], runner.slots(job)
            ready = all(status[x] in ("done", "skipped") for x in job["deps"])
            room = not running or used + need <= runner.capacity
            if status[jid] == "pending" and ready and room:
                running[runner.submit(job, out, data)] = (jid, need)
                used += need
                status[jid] = "running"
        if not running:
            return
        for handle, rec, err in runner.wait(list(running)):
            jid, need = running.pop(handle)
            used -= need
            if rec is None:  # the worker died: recorded here, as the job could not
                old = failed_file(out, jid)
                attempts = 1 + (read_json(old).get("attempts", 0) if old.exists() else 0)
                rec = {"status": "failed", "job": by_id[jid], "rows": [], "error": err}
                write_json(old, rec | {"attempts": attempts})
                rec["attempts"] = attempts
            records[jid], status[jid] = rec, rec["status"]
            pbar.update(1)
        on_change()


def run_sweep(
    spec_path: str | Path,
    out: str | Path,
    *,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    retry_failed: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    pdf: bool = False,
) -> SweepResult:
    """Run every job of the spec at `spec_path` that has not finished in `out` (see the module
    docstring), on `backend` ("local": `workers` processes; "ray": the cluster at `address`, or a
    local instance with `workers` CPUs), and gather the results. `overwrite` deletes OUT/jobs
    first (everything runs again)."""
    from .. import plot
    from ..data import load

    if backend not in BACKENDS:
        raise IsthmusError(f"--backend {backend}: choose local or ray")
    if address is not None and backend != "ray":
        raise IsthmusError(
            f"--address {address} is for --backend ray; add --backend ray or drop it"
        )
    if address is not None and workers is not None:
        raise IsthmusError(
            f"--workers sets the CPUs of a Ray instance started here; the cluster at --address "
            f"{address} has its own: drop --workers (a group's num_cpus sets each job's share)"
        )
    spec = load_spec(spec_path)
    d = spec.data
    data = load(d["name"], root=d["root"], seed=d["seed"])  # here first: a missing file fails now
    check_models(spec, data.input_shape, data.num_classes)
    gpu = [g.name for g in spec.groups if g.num_gpus > 0]
    if backend == "local" and gpu:
        import torch

        if not torch.cuda.is_available():
            raise IsthmusError(
                f"{spec.path}: group(s) {gpu} ask for num_gpus > 0 but this machine has no CUDA "
                "device; fix: set num_gpus = 0, or run with --backend ray on a cluster with GPUs"
            )
    jobs, out = plan(spec), Path(out).resolve()
    if overwrite:
        shutil.rmtree(out / JOBS_DIR, ignore_errors=True)
    status, records = _found(jobs, out, retry_failed)

    def write_state() -> list[dict]:
        entries = [_entry(j, records.get(j["id"]), status[j["id"]]) for j in jobs]
        doc = {"isthmus_version": __version__, "spec_file": str(spec.path), "spec": spec.raw,
               "backend": backend, "address": address, "jobs": entries}  # fmt: skip
        write_json(out / "sweep.json", doc)
        return entries

    initial = sum(s != "pending" for s in status.values())
    pbar = bar(total=len(jobs), initial=initial, progress=progress, desc="sweep", unit="job")
    write_state()
    runner = LocalBackend(workers) if backend == "local" else RayBackend(address, workers)
    try:
        _schedule(jobs, runner, str(out), d, status, records, pbar, write_state)
    except BaseException:  # Ctrl-C: finished jobs are kept, running ones are not waited for
        runner.close(wait=False)
        raise
    finally:
        pbar.close()
    runner.close()
    entries = write_state()
    rows = [
        r for j in jobs if status[j["id"]] in ("done", "skipped") for r in records[j["id"]]["rows"]
    ]
    files = [out / "sweep.json", out / "results.json", out / "results.csv"]
    write_json(
        out / "results.json",
        {"columns": list(dict.fromkeys(k for r in rows for k in r)), "rows": rows},
    )
    atomic_write_bytes(out / "results.csv", _csv(rows))
    if rows:
        files.append(plot.sweep_results(rows, METRICS, out / "sweep.png", pdf=pdf))
    counts = {
        s: sum(e["status"] == s for e in entries) for s in ("done", "skipped", "failed", "blocked")
    }
    return SweepResult(entries, rows, counts, files)
