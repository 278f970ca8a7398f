"""`isthmus sweep`: the jobs of a TOML spec on a local process pool or a Ray cluster
(`sweep.run_sweep`, docs/sweeps.md); parse, call, print."""

from __future__ import annotations

from . import _common as c


def cmd_sweep(args) -> None:
    from ..errors import IsthmusError
    from ..sweep import run_sweep

    out = c.new_output(args.out, [args.spec], args)
    res = run_sweep(
        args.spec, out, backend=args.backend, address=args.address, workers=args.workers,
        retry_failed=args.retry_failed, overwrite=args.overwrite, pdf=args.pdf,
    )  # fmt: skip
    n = res.counts
    print(
        f"{len(res.jobs)} jobs: {n['done']} run, {n['skipped']} finished before (skipped), "
        f"{n['failed']} failed, {n['blocked']} blocked by a failed input"
    )
    for e in res.jobs:
        if e["status"] == "failed":
            print(f"  failed {e['id']}: {e['error']}")
    print(f"wrote {' | '.join(map(str, res.files))}")
    if n["failed"] or n["blocked"]:
        raise IsthmusError(
            f"{n['failed']} job(s) failed (errors in {out / 'sweep.json'}); fix the cause and "
            "rerun with --resume --retry-failed"
        )


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="many train / connect / stability / hessian jobs from one spec, locally or on Ray",
        description="Run the jobs of SPEC.toml (a grid or list of train, connect, stability and "
        "hessian jobs; schema in docs/sweeps.md) on a local process pool or as Ray tasks, and "
        "gather OUT/results.csv, OUT/results.json, OUT/sweep.png and OUT/sweep.json. Every job "
        "writes OUT/jobs/<id> whole when it finishes; a rerun with --resume skips finished jobs. "
        "Seeds: each job's seed comes from the spec (a group's seeds), as --seed of the matching "
        "command; the same spec gives the same numbers.",
    )
    p.add_argument("spec", help="the sweep spec (TOML)")
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where jobs run: a local process pool, or Ray tasks [local]",
    )
    p.add_argument(
        "--address",
        default=None,
        help="ray: a cluster to join (auto, or ray://host:10001) [start a local instance]",
    )
    p.add_argument(
        "--workers",
        type=c.bounded(1, 4096),
        default=None,
        help="local: worker processes; ray without --address: CPUs of the local instance "
        "[this machine's cores]",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="run failed jobs again (else they are kept)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue in an existing --out: skip finished jobs"
    )
    c.add_pdf(p)
    c.add_output(p, "sweep folder (jobs/, results, figure)")
    p.set_defaults(fn=cmd_sweep)
