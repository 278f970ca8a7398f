"""`isthmus align`: permute run B's hidden units into run A's order (git re-basin;
`align.align_and_compare`).

Writes B permuted as a normal run directory (config.json records "permutation" and "aligned_to"),
`align.json` with the straight-line barrier before and after alignment, and `align.png`.
"""

from __future__ import annotations

from . import _common as c


def cmd_align(args) -> None:
    from .. import plot
    from ..align import align_and_compare, perm_to_json
    from ..io import inputs_record, load_runs, save_run, write_json

    out = c.new_output(args.out, [args.run_a, args.run_b], args)
    a, b = load_runs([args.run_a, args.run_b], c.device(args.device))
    data = c.load_data(args, a.config)
    cmp = align_and_compare(
        a.model, a.params, b.params, data, args.method, seed=args.seed,
        n_examples=args.n_examples, max_iter=args.max_iter, points=args.points,
        batch_size=args.batch_size,
    )  # fmt: skip
    res, before, after = cmp.result, cmp.before, cmp.after
    config = dict(b.config)
    config["permutation"] = perm_to_json(res.perm)
    config["aligned_to"] = str(args.run_a)
    config["alignment"] = {"method": args.method, "seed": args.seed, "source": str(args.run_b)}
    # the permuted net computes B's function, so B's metrics (and history) describe it exactly
    save_run(out, res.params, config, b.metrics or None)
    summary = {
        "method": args.method,
        "seed": args.seed,
        "run_a": str(args.run_a),
        "run_b": str(args.run_b),
        "data": data.name,
        "barrier_before": before.barrier,
        "barrier_after": after.barrier,
        **res.extra,
        "before": before.to_json(),
        "after": after.to_json(),
        "inputs": inputs_record(
            [(args.run_a, a.params), (args.run_b, b.params)], c.data_record(args, a.config)
        ),
    }
    write_json(out / "align.json", summary)
    what = {"weights": "weight", "activations": "activation"}[args.method]
    fig = plot.alignment_curves(
        [(f"{data.name}: straight line A -> B, {what} matching", before, after)],
        out / "align.png",
        pdf=args.pdf,
    )
    bb, ba = before.barrier, after.barrier
    print(
        f"straight-line barrier (train loss) before {bb['train_loss']:.4f} -> after "
        f"{ba['train_loss']:.4f} | test {bb['test_loss']:.4f} -> {ba['test_loss']:.4f} "
        f"({what} matching)"
    )
    print(f"aligned run: {out} | {out / 'align.json'} | {fig}")


def register(sub) -> None:
    p = sub.add_parser(
        "align",
        help="permute run B's hidden units into run A's order (weight/activation matching)",
        description="Align B to A by permuting hidden units (Ainsworth et al. 2023): write B "
        "permuted as a run directory (same function; config.json records the permutation), "
        "align.json with the straight-line barrier before and after, and align.png.",
    )
    p.add_argument("run_a", metavar="RUN_A", help="run directory of the reference net A")
    p.add_argument("run_b", metavar="RUN_B", help="run directory of the net B to permute")
    p.add_argument(
        "--method",
        default="weights",
        choices=["weights", "activations"],
        help="weight matching (no data) or activation matching (correlations on data) [weights]",
    )
    c.add_output(p, "run directory to write (B aligned to A)")
    c.add_data(p, default=None)
    c.add_seed(p)
    p.add_argument(
        "--n-examples",
        type=c.positive,
        default=10_000,
        help="training inputs used for activation statistics (seeded subset) [10000]",
    )
    p.add_argument(
        "--max-iter",
        type=c.positive,
        default=100,
        help="weight matching: at most this many sweeps [100]",
    )
    p.add_argument(
        "--points", type=c.bounded(2, 10**5), default=61, help="points on each straight line [61]"
    )
    p.add_argument(
        "--batch-size", type=c.positive, default=2048, help="examples per forward pass [2048]"
    )
    c.add_pdf(p)
    p.set_defaults(fn=cmd_align)
