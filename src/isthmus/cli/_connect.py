"""`isthmus connect`: a path between two runs (`paths.connect`), written with `paths.save_path`.

Writes DIR/path.json (docs/definitions.md), DIR/path.safetensors (the path's control points /
nodes) and DIR/path.png; fitted curves (every epoch), AutoNEB (every cycle) and the orthogonal
finder (every pivot) are checkpointed in DIR/.checkpoint (--resume continues).
"""

from __future__ import annotations

from dataclasses import replace

from . import _common as c


def _fmt(b: dict) -> str:
    return (
        f"barrier (train loss) {b['train_loss']:.4f} (vs mean of ends {b['train_loss_vs_mean']:.4f}), "
        f"test {b['test_loss']:.4f}, at t = {b['t_max']:.3f}"
    )


def cmd_connect(args) -> None:
    from .. import plot
    from ..io import inputs_record, load_runs
    from ..paths import FitConfig, connect, save_path
    from ..paths.connect import NEB_EPOCHS, NEB_LR, NEB_OPTIMIZER, neb_config, orthogonal_config
    from ..repair import connect_repaired
    from ..stability import load_stability

    if args.repair and (not args.align or args.method != "linear"):
        raise c.IsthmusError("--repair corrects the aligned line: add --align, --method linear")
    out = c.new_output(args.out, [args.run_a, args.run_b], args)
    a, b = load_runs([args.run_a, args.run_b], c.device(args.device))
    data = c.load_data(args, a.config)
    pb = b.params
    if args.align:
        from ..align import align

        pb = align(a.model, a.params, pb, args.align, data=data, seed=args.seed).params
    fit = neb = ortho = stability = None
    if args.method in ("chain", "bezier"):
        d = FitConfig()
        fit = FitConfig(
            epochs=d.epochs if args.epochs is None else args.epochs,
            optimizer=args.optimizer or d.optimizer,
            lr=d.lr if args.lr is None else args.lr,
            batch_size=args.batch_size,
            samples=args.samples,
            l2=args.l2,
        )
        fit.validate("command line")
    elif args.method == "neb":
        neb = neb_config(
            len(data.x_train), epochs=NEB_EPOCHS if args.epochs is None else args.epochs, batch_size=args.batch_size,
            pivots=args.pivots, cycles=args.cycles, optimizer=args.optimizer or NEB_OPTIMIZER,
            lr=NEB_LR if args.lr is None else args.lr, source="command line",
        )  # fmt: skip
    elif args.method == "orthogonal":
        ortho = orthogonal_config(
            len(data.x_train), epochs=args.epochs, batch_size=args.batch_size,
            depth=args.depth, tolerance=args.tolerance, optimizer=args.optimizer, lr=args.lr,
            source="command line",
        )  # fmt: skip
    elif args.stability:  # dropout | noise
        pairs = zip(args.stability, (a, b), strict=True)
        stability = tuple(load_stability(s, (r.path, r.params)) for s, r in pairs)
    if args.repair:  # REPAIR on the aligned straight line
        con = connect_repaired(a.model, a.params, pb, data, points=args.points,
            batch_size=args.batch_size_eval, chunk=args.chunk, seed=args.seed)  # fmt: skip
    else:
        con = connect(
        a.model, a.params, pb, data, args.method, bends=args.bends, fit=fit, neb=neb,
        orthogonal=ortho, neb_batch_size=args.batch_size, stability=stability or (None, None),
        points=args.points, batch_size=args.batch_size_eval, chunk=args.chunk, seed=args.seed,
        checkpoint=out / ".checkpoint", resume=args.resume,
    )  # fmt: skip
    runs = {
        "runs": [str(args.run_a), str(args.run_b)],
        **({"align": args.align} if args.align else {}),
    }
    result = replace(con.result, extra={**con.result.extra, **runs})
    ab = [(args.run_a, a.params), (args.run_b, b.params)]
    save_path(out, con.path, result, inputs_record(ab, c.data_record(args, a.config)))
    method, straight = args.method, con.line
    if method in ("dropout", "noise"):  # segments shaded by kind, certified bound
        title = f"{data.name}: {method} path (Kuditipudi et al. 2019) vs straight line"
        fig = plot.certified_path(
            result, out / "path.png", line=straight, title=title, pdf=args.pdf
        )
    elif method == "linear" and not args.repair:
        fig = plot.path_profiles([result], ["linear"], out / "path.png", pdf=args.pdf)
    else:
        shown, labels = [straight, result], ["linear", "linear + REPAIR" if args.repair else method]
        fig = plot.path_profiles(shown, labels, out / "path.png", pdf=args.pdf)
    if method != "linear" or args.repair:
        print(f"linear: {_fmt(straight.barrier)}")
    print(f"{method}{' + REPAIR' if args.repair else ''}: {_fmt(result.barrier)}")
    print(f"wrote {out / 'path.json'} | {out / 'path.safetensors'} | {fig}")


def register(sub) -> None:
    from ..paths.connect import METHODS

    p = sub.add_parser(
        "connect",
        help="a path between two runs: linear, chain, bezier, neb, orthogonal, dropout, noise",
        description="Connect two runs of one architecture and evaluate train/test loss and accuracy "
        "along the path. Writes OUT/path.json, OUT/path.safetensors and OUT/path.png; for every "
        "method but linear the straight line is evaluated too, for comparison.",
    )
    p.add_argument("run_a", help="run directory of net A (t = 0)")
    p.add_argument("run_b", help="run directory of net B (t = 1)")
    p.add_argument("--method", default="bezier", choices=METHODS, help="path type [bezier]")
    p.add_argument(
        "--bends", type=c.bounded(1, 100), default=1, help="bends of a chain / Bezier curve [1]"
    )
    what = "epochs of the curve fit, of NEB over all cycles [20], per orthogonal pivot [2]"
    p.add_argument("--epochs", type=c.positive, help=what)
    p.add_argument(
        "--points", type=c.bounded(2, 10**5), default=61, help="evaluated values of t [61]"
    )
    lr = c.real(0, 1e3, open_lo=True)
    p.add_argument("--lr", type=lr, help="lr [curves 0.1, neb/orthogonal 0.05]")
    c.add_optimizer(p)
    p.add_argument(
        "--batch-size", type=c.positive, default=128, help="minibatch of fit/NEB/orthogonal [128]"
    )
    c.add_eval_sizes(p, "--batch-size-eval", "examples per forward pass when evaluating the path")
    what = "values of t per minibatch (curves) [4]"
    p.add_argument("--samples", type=c.bounded(1, 4096), default=4, help=what)
    p.add_argument("--l2", type=c.real(0, 1e3), default=0.0, help="L2 on the bends (curves) [0]")
    c.add_neb(p)
    p.add_argument("--depth", type=c.bounded(1, 20), default=None, help="orthogonal: levels [3]")
    p.add_argument("--tolerance", type=c.real(0), default=None, help="orthogonal: split if > [0]")
    what = "first permute B's units to match A (weight or activation matching)"
    p.add_argument("--align", default=None, choices=["weights", "activations"], help=what)
    what = (
        "with --align and --method linear: REPAIR the line's unit statistics (Jordan et al. 2023)"
    )
    p.add_argument("--repair", action="store_true", help=what)
    what = "stability results (from `isthmus stability`) for --method dropout|noise"
    p.add_argument("--stability", nargs=2, metavar=("DIR_A", "DIR_B"), help=what)
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted curve fit or AutoNEB"
    )
    p.set_defaults(fn=cmd_connect)
