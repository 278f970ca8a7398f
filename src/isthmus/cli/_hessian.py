"""`isthmus hessian`: curvature of a run's training loss (top eigenvalues, trace, spectral
density, per layer; docs/large_scale.md); parse, call, write, print."""

from __future__ import annotations

from . import _common as c


def cmd_hessian(args) -> None:
    from .. import plot
    from ..curvature import summarize
    from ..io import inputs_record, load_run, write_json

    run = load_run(args.run, c.device(args.device))
    data = c.load_data(args, run.config)
    out = c.new_output(args.out, [args.run], args)
    res = summarize(
        run.model,
        run.params,
        data,
        top=args.top,
        trace=args.trace,
        density=args.density,
        per_layer=args.per_layer,
        examples=args.examples,
        probes=args.probes,
        seed=args.seed,
    )
    doc = {"run": str(args.run), "data": data.name, "seed": args.seed, **res.to_json()}
    doc["inputs"] = inputs_record([(args.run, run.params)], c.data_record(args, run.config))
    write_json(out / "hessian.json", doc)
    eig = ", ".join(f"{v:.4g}" for v in res.eigenvalues)
    print(f"{args.run}: top {len(res.eigenvalues)} eigenvalues {eig} ({res.examples} examples)")
    if res.trace is not None:
        print(
            f"trace {res.trace.estimate:.4g} +- {res.trace.stderr:.2g} ({res.trace.probes} probes)"
        )
    if res.density is not None:
        fig = plot.hessian_density(res, out / "hessian_density", pdf=args.pdf)
        print(f"density -> {fig}")
    print(f"wrote {out / 'hessian.json'}")


def register(sub) -> None:
    p = sub.add_parser(
        "hessian",
        help="curvature of a run's training loss: top eigenvalues, trace, spectral density",
        description="Hessian of the mean training loss at the run's weights (whole training "
        "split in batches, eval mode; BatchNorm statistics by the project's policy), matrix-free: "
        "Lanczos top eigenvalues, Hutchinson trace, stochastic Lanczos quadrature density, per "
        "layer. Writes OUT/hessian.json (and OUT/hessian_density.png with --density).",
    )
    p.add_argument("run", help="run directory")
    c.add_data(p, default=None)
    p.add_argument("--top", type=c.bounded(1, 1000), default=5, help="eigenvalues to compute [5]")
    p.add_argument("--trace", action="store_true", help="also Hutchinson's trace estimate")
    p.add_argument("--density", action="store_true", help="also the spectral density (SLQ)")
    p.add_argument("--per-layer", action="store_true", help="also each layer's block")
    p.add_argument("--probes", type=c.bounded(1, 10**5), default=100, help="trace probes [100]")
    p.add_argument(
        "--examples", type=c.positive, default=None, help="first N training examples [all]"
    )
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.set_defaults(fn=cmd_hessian)
