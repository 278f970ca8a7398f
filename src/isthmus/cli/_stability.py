"""`isthmus stability` (Kuditipudi et al. 2019): dropout or noise stability of a run; parse, call,
write, print."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import _common as c


def cmd_stability(args) -> None:
    import torch

    from ..io import inputs_record, load_run
    from ..params import to

    run = load_run(args.run, c.device(args.device))
    data = c.load_data(args, run.config)
    model, params = run.model, run.params
    if args.float64:
        model, params = model.double(), to(params, dtype=torch.float64)
    out = c.new_output(args.out, [args.run], args)
    args.inputs = inputs_record([(args.run, run.params)], c.data_record(args, run.config))
    (_dropout if args.kind == "dropout" else _noise)(args, model, params, data, out)


def _dropout(args, model, params, data, out: Path) -> None:
    from .. import plot
    from ..stability import dropout_loss_curve, dropout_stability, save_stability

    res = dropout_stability(
        model, params, data, strategy=args.strategy, draws=args.draws, seed=args.seed,
        fit_r=args.fit_r, swaps=args.swaps, batch_size=args.batch_size,
        checkpoint=out / ".checkpoint" / "dropout_search.json", resume=args.resume,
    )  # fmt: skip
    curve = None
    if args.curve_draws > 0:
        curve = dropout_loss_curve(
            model, params, data, draws=args.curve_draws, seed=args.seed, batch_size=args.batch_size
        )
        res = replace(res, keep_rate_curve=curve)
    path = save_stability(out, res, args.inputs)
    fig = plot.stability_dropout(res, out / "stability.png", curve, pdf=args.pdf)
    per = ", ".join(f"i={ch.i}: {ch.loss:.4f}" for ch in res.by_start_layer)
    how = f"strategy {args.strategy}, seed {args.seed}" + (", fitted r" if args.fit_r else "")
    print(
        f"{args.run}: dropout epsilon {res.epsilon:.4f} (L(theta) {res.loss:.4f}; "
        f"L(theta_i) {per}; {how}) -> {path}, {fig}"
    )


def _noise(args, model, params, data, out: Path) -> None:
    from .. import plot
    from ..stability import noise_stability, save_stability

    res = noise_stability(
        model, params, data, n_examples=args.examples, n_proj=args.projections or None,
        seed=args.seed, noise_scale=args.noise_scale, batch_size=args.batch_size,
    )  # fmt: skip
    path = save_stability(out, res, args.inputs)
    fig = plot.stability_noise(res, out / "stability.png", pdf=args.pdf)
    att = ", ".join(
        f"layer {a['i']}: {c.number(a['relative_change'][-1])}" for a in res.attenuation
    )
    print(
        f"{args.run}: noise epsilon {res.epsilon:.4g} (c {c.number(res.activation_contraction)}, "
        f"rho {c.number(res.interlayer_smoothness)}; relative output change for noise at {att}) "
        f"-> {path}, {fig}"
    )


def register(sub) -> None:
    p = sub.add_parser(
        "stability",
        help="dropout or noise stability of a trained net (Kuditipudi et al. 2019)",
        description="Dropout: search, for every start layer i, kept sets (floor(h/2) units or "
        "channels per layer i..d-1, factor r = h/|S|) minimising the train loss of the dropout "
        "version theta_i; epsilon = max_i L(theta_i) - L(theta). Noise: layer and interlayer "
        "cushions, activation contraction, interlayer smoothness and noise attenuation. Writes "
        "OUT/stability.json and OUT/stability.png and prints epsilon.",
    )
    p.add_argument("run", help="run directory (from `isthmus train`)")
    p.add_argument("--kind", default="dropout", choices=["dropout", "noise"], help="[dropout]")
    p.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "random", "greedy", "swap"],
        help="dropout search: random draws, greedy by importance, local swaps, or all [auto]",
    )
    p.add_argument(
        "--draws",
        type=c.bounded(0, 10**6),
        default=256,
        help="random kept sets per start layer [256]",
    )
    p.add_argument(
        "--swaps",
        type=c.bounded(0, 10**6),
        default=256,
        help="candidate swaps per start layer [256]",
    )
    p.add_argument(
        "--fit-r", action="store_true", help="fit one global multiplier of r by a line search"
    )
    p.add_argument(
        "--curve-draws",
        type=c.bounded(0, 10**5),
        default=20,
        help="draws per keep rate for the loss-vs-keep-rate curve, 0 to skip [20]",
    )
    p.add_argument(
        "--examples", type=c.positive, default=256, help="noise: training examples used [256]"
    )
    p.add_argument(
        "--projections",
        type=c.bounded(0, 10**5),
        default=128,
        help="noise: Gaussian probes per Jacobian norm, 0 = exact [128]",
    )
    p.add_argument(
        "--noise-scale",
        type=c.real(0, 1e6, open_lo=True),
        default=1.0,
        help="noise: ||eta|| / ||x^i|| [1.0]",
    )
    p.add_argument(
        "--batch-size",
        type=c.positive,
        default=None,
        help="examples per forward pass [all at once]",
    )
    p.add_argument(
        "--float64", action="store_true", help="evaluate in float64 (as certificates do)"
    )
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p, "folder for stability.json and the figure")
    p.add_argument(
        "--resume",
        action="store_true",
        help="dropout: continue an interrupted search (start layers done are kept, OUT/.checkpoint)",
    )
    p.set_defaults(fn=cmd_stability)
