"""`isthmus connect` (a path between two runs), `isthmus tree` (paths between N runs and their
minimum spanning tree) and `isthmus surface` (loss planes and slices).

connect writes DIR/path.json (SCIENCE.md section 5), DIR/path.safetensors (the path's control
points / nodes) and DIR/path.png; fitted curves (every epoch) and AutoNEB (every cycle) are
checkpointed in DIR/.checkpoint (--resume continues). tree writes DIR/tree.json (after every pair: --resume skips finished pairs)
and DIR/tree.png. surface writes DIR/surface.json and DIR/surface.png (the grid so far in
DIR/.checkpoint after every chunk: --resume continues).
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

from . import _common as c

METHODS = ("linear", "chain", "bezier", "neb", "dropout", "noise")
FIT_DEFAULTS = {"epochs": 20, "lr": 0.1, "optimizer": "sgd"}
NEB_DEFAULTS = {"epochs": 20, "lr": 0.05, "optimizer": "sgd"}


def _load_pair(run_a: str, run_b: str, device):
    """Both runs, or a clear message naming both when their architectures differ."""
    from ..io import load_run

    a, b = load_run(run_a, device), load_run(run_b, device)
    _same_architecture(a, b, run_a, run_b)
    return a, b


def _same_architecture(a, b, run_a: str, run_b: str) -> None:
    from ..errors import IsthmusError
    from ..params import check_compatible

    ma, mb = a.model_config.to_dict(), b.model_config.to_dict()
    if ma != mb:
        diff = ", ".join(f"model.{k}: {ma[k]!r} vs {mb.get(k)!r}" for k in ma if ma[k] != mb.get(k))
        raise IsthmusError(
            f"{run_a} and {run_b} have different architectures ({diff}); only nets of one "
            "architecture can be connected"
        )
    check_compatible(a.params, b.params, (str(run_a), str(run_b)))


def _segments(result, knots: list[float]) -> list[dict]:
    """One entry per straight segment of a piecewise path, read off the evaluated profile."""
    t, loss = result.t, result.train_loss
    out = []
    for t0, t1 in zip(knots, knots[1:], strict=False):
        inside = [i for i, v in enumerate(t) if t0 - 1e-12 <= v <= t1 + 1e-12]
        i0, i1 = (
            min(inside, key=lambda i: abs(t[i] - t0)),
            min(inside, key=lambda i: abs(t[i] - t1)),
        )
        out.append(
            {
                "kind": "line",
                "t0": t0,
                "t1": t1,
                "loss0": loss[i0],
                "loss1": loss[i1],
                "max_loss": max(loss[i] for i in inside),
            }
        )
    return out


def _eval_sizes(kind: str, batch: int | None, chunk: int | None) -> tuple[int | None, int]:
    """Examples per forward pass and points per batched call: everything at once for MLPs; for
    CNNs 1,000 examples x 16 points, so image data fits in memory (activations scale with both)."""
    if kind == "mlp":
        return batch, chunk or 64
    return batch or 1000, chunk or 16


def _fmt(b: dict) -> str:
    return (
        f"barrier (train loss) {b['train_loss']:.4f} (vs mean of ends {b['train_loss_vs_mean']:.4f}), "
        f"test {b['test_loss']:.4f}, at t = {b['t_max']:.3f}"
    )


def cmd_connect(args) -> None:
    from .. import plot
    from ..errors import IsthmusError
    from ..io import save_tensors, write_json
    from ..params import bn_subset, has_bn, unshared
    from ..paths import evaluate_path, line

    out = Path(args.out)
    for run in (args.run_a, args.run_b):
        if out.resolve() == Path(run).resolve():
            raise IsthmusError(f"--out {args.out} is an input run; choose a new directory")
    if args.bends < 1:
        raise IsthmusError(f"--bends must be >= 1, got {args.bends}")
    dev = c.device(args.device)
    a, b = _load_pair(args.run_a, args.run_b, dev)
    data = c.load_data(args, a.config)
    model, pa, pb = a.model, a.params, b.params
    extra: dict = {
        "runs": [str(args.run_a), str(args.run_b)],
        "data": data.name,
        "seed": args.seed,
    }
    if args.align:
        from ..align import align

        res = align(model, pa, pb, args.align, data=data, seed=args.seed)
        pb = res.params
        extra["align"] = args.align
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    batch, chunk = _eval_sizes(a.model_config.kind, args.batch_size_eval, args.chunk)
    kw = dict(points=args.points, batch_size=batch, chunk=chunk, bn_x=bn_x)
    method = args.method
    straight = evaluate_path(model, line(pa, pb), data, **kw)
    if method == "linear":
        path, result = line(pa, pb), straight
    elif method in ("chain", "bezier"):
        from ..paths.bezier import BezierPath
        from ..paths.chain import ChainPath
        from ..paths.fit import FitConfig, fit_curve

        d = FIT_DEFAULTS
        cfg = FitConfig(
            epochs=args.epochs or d["epochs"],
            optimizer=args.optimizer or d["optimizer"],
            lr=args.lr or d["lr"],
            batch_size=args.batch_size,
            samples=args.samples,
            l2=args.l2,
        )
        cfg.validate("command line")
        init = (BezierPath if method == "bezier" else ChainPath).on_line(pa, pb, args.bends)
        fit = fit_curve(
            model,
            init,
            data,
            cfg,
            seed=args.seed,
            checkpoint=out / ".checkpoint",
            resume=args.resume,
        )
        path = fit.path
        result = evaluate_path(model, path, data, **kw)
        extra.update(bends=args.bends, fit=asdict(cfg), fit_history=fit.history)
    elif method == "neb":
        from ..paths.neb import connect_neb

        cfg = _neb_config(args, len(data.x_train))
        path, neb = connect_neb(
            model,
            pa,
            pb,
            data,
            cfg,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint=out / ".checkpoint",
            resume=args.resume,
        )
        result = evaluate_path(model, path, data, **kw)
        extra.update(neb=asdict(cfg), neb_history=neb.history, pivots=len(neb.pivots))
    else:  # dropout | noise: the constructive paths of Kuditipudi et al. 2019
        from ..stability import load_stability

        if method == "dropout":
            from ..paths.dropout import connect_dropout as connect_fn
        else:
            from ..paths.noise import connect_noise as connect_fn
        sa, sb = (load_stability(s) for s in args.stability) if args.stability else (None, None)
        path, result = connect_fn(
            model, pa, pb, data, stability_a=sa, stability_b=sb, seed=args.seed, points=args.points
        )
    if method in ("chain", "neb"):
        result = replace(result, segments=_segments(result, path.knots()))
    if method != "linear":
        extra["linear"] = {"barrier": straight.barrier}
    result = replace(result, extra={**result.extra, **extra})
    write_json(out / "path.json", result.to_json())
    tensors = unshared(path.tensors())
    save_tensors(out / "path.safetensors", tensors, metadata={"method": path.method})
    if method in ("dropout", "noise"):  # segments shaded by kind, certified bound
        title = f"{data.name}: {method} path (Kuditipudi et al. 2019) vs straight line"
        fig = plot.certified_path(
            result, out / "path.png", line=straight, title=title, pdf=args.pdf
        )
    else:
        shown = [result] if method == "linear" else [straight, result]
        labels = ["linear"] if method == "linear" else ["linear", method]
        fig = plot.path_profiles(shown, labels, out / "path.png", pdf=args.pdf)
    if method != "linear":
        print(f"linear: {_fmt(straight.barrier)}")
    print(f"{method}: {_fmt(result.barrier)}")
    print(f"wrote {out / 'path.json'} | {out / 'path.safetensors'} | {fig}")


def _neb_config(args, n_train: int):
    from ..paths.neb import NEBConfig

    d = NEB_DEFAULTS
    per_epoch = math.ceil(n_train / min(args.batch_size, n_train))
    cfg = NEBConfig(
        pivots=args.pivots,
        cycles=args.cycles,
        steps=max(1, math.ceil((args.epochs or d["epochs"]) * per_epoch / args.cycles)),
        optimizer=args.optimizer or d["optimizer"],
        lr=args.lr or d["lr"],
    )
    cfg.validate("command line")
    return cfg


def cmd_tree(args) -> None:
    """Paths between every pair of N runs, then the minimum spanning tree (Draxler et al. 2018):
    its worst edge bounds the path weight between any two of the runs, through the tree."""
    from .. import plot
    from ..errors import IsthmusError
    from ..io import load_run, read_json, write_json
    from ..params import bn_subset, has_bn
    from ..paths.neb import connect_nets

    runs = [str(r) for r in args.runs]
    if len(runs) < 3:
        raise IsthmusError(
            f"tree needs at least three runs (for two, use connect), got {len(runs)}"
        )
    if len(set(runs)) != len(runs):
        raise IsthmusError("tree: a run is given twice")
    dev = c.device(args.device)
    loaded = [load_run(r, dev) for r in runs]
    first = loaded[0]
    for r, other in zip(runs[1:], loaded[1:], strict=True):
        _same_architecture(first, other, runs[0], r)
    data = c.load_data(args, first.config)
    model = first.model
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    batch, chunk = _eval_sizes(first.model_config.kind, None, None)
    out = Path(args.out)
    settings = {
        "runs": runs,
        "method": args.method,
        "weight": args.weight,
        "data": data.name,
        "seed": args.seed,
        "points": args.points,
    }
    cfg = _neb_config(args, len(data.x_train))
    if args.method == "neb":
        settings["neb"] = asdict(cfg)
    pairs: dict[str, dict] = {}
    if args.resume and (out / "tree.json").exists():
        state = read_json(out / "tree.json")
        if state.get("settings") != settings:
            raise IsthmusError(
                f"--resume: {out}/tree.json was written for other settings; use the same runs and "
                "flags, or a new --out"
            )
        pairs = dict(state.get("pairs", {}))
    elif (out / "tree.json").exists():
        raise IsthmusError(f"{out}/tree.json exists; pass --resume to continue it or a new --out")

    def checkpoint(key: str, record: dict) -> None:
        pairs[key] = record
        write_json(out / "tree.json", {"settings": settings, "pairs": pairs, "done": False})

    tree, _ = connect_nets(
        model,
        [r.params for r in loaded],
        data,
        cfg,
        method=args.method,
        weight=args.weight,
        points=args.points,
        batch_size=args.batch_size,
        seed=args.seed,
        eval_kw=dict(batch_size=batch, chunk=chunk, bn_x=bn_x),
        done=pairs,
        on_pair=checkpoint,
    )
    write_json(
        out / "tree.json",
        {"settings": settings, "pairs": pairs, "done": True, "tree": tree.to_json()},
    )
    names = [Path(r).name or r for r in runs]
    label = {
        "max_loss": "max train loss on the path (nats)",
        "barrier": "train-loss barrier (nats)",
    }
    fig = plot.spanning_tree(
        tree.weights, tree.edges, names, out / "tree.png", label[args.weight], args.pdf
    )
    for i, j, v in tree.edges:
        print(f"edge {runs[i]} - {runs[j]}: {args.weight} {v:.4f}")
    print(f"worst edge of the tree: {tree.worst:.4f} (bounds every pair through the tree)")
    print(f"wrote {out / 'tree.json'} | {fig}")


def load_path(folder: str | Path, device=None):
    """The path written by `isthmus connect` into `folder` (path.json + path.safetensors)."""
    from ..io import load_tensors, read_json
    from ..paths.bezier import BezierPath
    from ..paths.chain import piecewise_from_tensors

    folder = Path(folder)
    method = read_json(folder / "path.json").get("method", "chain")
    tensors = {k: v.to(device) for k, v in load_tensors(folder / "path.safetensors").items()}
    if method == "bezier":
        return BezierPath.from_tensors(tensors)
    knots = tensors.pop("knots", None)
    if knots is not None:
        tensors["knots"] = knots.cpu()
    return piecewise_from_tensors(tensors, method)


def cmd_surface(args) -> None:
    from .. import plot
    from ..errors import IsthmusError
    from ..io import load_run, write_json
    from ..params import bn_subset, check_compatible, has_bn
    from ..surface import Plane, RandomSlice, evaluate_surface

    dev = c.device(args.device)
    runs = list(args.runs)
    if args.around and runs:
        raise IsthmusError("give either three runs (a plane) or --around RUN (a random slice)")
    paths = {}
    if args.around:
        center = load_run(args.around, dev)
        model, config = center.model, center.config
        sl = RandomSlice(center.params, dims=args.dims, seed=args.seed, span=args.span)
    else:
        if len(runs) == 2 and args.path:
            pass
        elif len(runs) != 3:
            raise IsthmusError(
                "surface needs RUN_A RUN_B RUN_C, or RUN_A RUN_B --path CONNECT_DIR (the plane "
                f"through A, the path's first bend and B), or --around RUN; got {len(runs)} run(s)"
            )
        loaded = [load_run(r, dev) for r in runs]
        for r in loaded[1:]:
            if r.model_config != loaded[0].model_config:
                raise IsthmusError(
                    f"{runs[0]} and {r.path} have different architectures; a plane needs one"
                )
            check_compatible(loaded[0].params, r.params, (runs[0], str(r.path)))
        model, config = loaded[0].model, loaded[0].config
        pts = [r.params for r in loaded]
        names = [Path(r).name or r for r in runs]
        if len(runs) == 2:
            p = load_path(args.path, dev)
            bends = getattr(p, "bends", None) or getattr(p, "nodes", [None] * 3)[1:-1]
            if not bends:
                raise IsthmusError(f"{args.path}: the path has no bend to span a plane with")
            check_compatible(pts[0], bends[0], (runs[0], f"{args.path} bend"))
            pts, names = [pts[0], pts[1], bends[0]], [names[0], names[1], "bend"]
        sl = Plane(*pts, names=names)
    if args.path:
        paths[read_method(args.path)] = load_path(args.path, dev)
    data = c.load_data(args, config)
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    kind = center.model_config.kind if args.around else loaded[0].model_config.kind
    batch, chunk = _eval_sizes(kind, args.batch_size, args.chunk)
    out = Path(args.out)
    res = evaluate_surface(
        model,
        sl,
        data,
        grid=args.grid,
        batch_size=batch,
        chunk=chunk,
        bn_x=bn_x,
        paths=paths,
        checkpoint=out / ".checkpoint" / "surface.json",
        resume=args.resume,
    )
    res = replace(res, extra={**res.extra, "runs": runs or [args.around], "seed": args.seed})
    write_json(out / "surface.json", res.to_json())
    fig = plot.surface(res, out / "surface.png", pdf=args.pdf)
    flat = [v for row in res.train_loss for v in (row if isinstance(row, list) else [row])]
    print(f"{sl.kind} surface, {len(flat)} points: train loss {min(flat):.4f} .. {max(flat):.4f}")
    print(f"wrote {out / 'surface.json'} | {fig}")


def read_method(folder: str | Path) -> str:
    from ..io import read_json

    return str(read_json(Path(folder) / "path.json").get("method", "path"))


def register(sub) -> None:
    p = sub.add_parser(
        "connect",
        help="a path between two runs: linear, chain, bezier, neb, dropout, noise",
        description="Connect two runs of one architecture and evaluate train/test loss and accuracy "
        "along the path. Writes OUT/path.json, OUT/path.safetensors and OUT/path.png; for curves "
        "and NEB the straight line is evaluated too, for comparison.",
    )
    p.add_argument("run_a", help="run directory of net A (t = 0)")
    p.add_argument("run_b", help="run directory of net B (t = 1)")
    p.add_argument("--method", default="bezier", choices=METHODS, help="path type [bezier]")
    p.add_argument(
        "--bends", type=c.positive, default=1, help="bends of a chain / Bezier curve [1]"
    )
    p.add_argument(
        "--epochs",
        type=c.positive,
        default=None,
        help="training epochs of the curve fit, or of NEB relaxation over all cycles [20]",
    )
    p.add_argument("--points", type=c.positive, default=61, help="evaluated values of t [61]")
    p.add_argument("--lr", type=float, default=None, help="learning rate [curves 0.1, neb 0.05]")
    p.add_argument(
        "--optimizer", default=None, choices=["sgd", "adam"], help="with momentum 0.9 [sgd]"
    )
    p.add_argument(
        "--batch-size", type=c.positive, default=128, help="minibatch of the fit / NEB [128]"
    )
    p.add_argument(
        "--batch-size-eval",
        type=c.positive,
        default=None,
        help="examples per forward pass when evaluating the path [MLP: all; CNN: 1000]",
    )
    p.add_argument(
        "--chunk", type=c.positive, default=None, help="points per batched call [MLP: 64; CNN: 16]"
    )
    p.add_argument(
        "--samples", type=c.positive, default=4, help="values of t per minibatch (curves) [4]"
    )
    p.add_argument("--l2", type=float, default=0.0, help="L2 on the bends (curves) [0]")
    p.add_argument("--pivots", type=int, default=3, help="initial interior NEB pivots [3]")
    p.add_argument("--cycles", type=c.positive, default=4, help="AutoNEB relax/insert cycles [4]")
    p.add_argument(
        "--align",
        default=None,
        choices=["weights", "activations"],
        help="first permute B's units to match A (weight or activation matching)",
    )
    p.add_argument(
        "--stability",
        nargs=2,
        metavar=("DIR_A", "DIR_B"),
        default=None,
        help="stability results (from `isthmus stability`) for --method dropout|noise",
    )
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted curve fit or AutoNEB"
    )
    p.set_defaults(fn=cmd_connect)

    p = sub.add_parser(
        "tree",
        help="paths between every pair of N runs and their minimum spanning tree",
        description="Connect every pair of N runs of one architecture (straight lines or AutoNEB) "
        "and build the minimum spanning tree on the pairwise path weights (Draxler et al. 2018): "
        "the tree's worst edge bounds the weight of a path between any two runs through the tree. "
        "Writes OUT/tree.json after every pair (--resume skips finished pairs) and OUT/tree.png.",
    )
    p.add_argument("runs", nargs="+", help="three or more run directories")
    p.add_argument("--method", default="neb", choices=["linear", "neb"], help="pair paths [neb]")
    p.add_argument(
        "--weight",
        default="max_loss",
        choices=["max_loss", "barrier"],
        help="edge weight: highest train loss on the path, or its barrier [max_loss]",
    )
    p.add_argument(
        "--points", type=c.positive, default=61, help="evaluated values of t per path [61]"
    )
    p.add_argument(
        "--epochs", type=c.positive, default=None, help="NEB epochs over all cycles [20]"
    )
    p.add_argument("--lr", type=float, default=None, help="NEB learning rate [0.05]")
    p.add_argument(
        "--optimizer", default=None, choices=["sgd", "adam"], help="with momentum 0.9 [sgd]"
    )
    p.add_argument("--batch-size", type=c.positive, default=128, help="NEB minibatch [128]")
    p.add_argument("--pivots", type=int, default=3, help="initial interior NEB pivots [3]")
    p.add_argument("--cycles", type=c.positive, default=4, help="AutoNEB relax/insert cycles [4]")
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted tree")
    p.set_defaults(fn=cmd_tree)

    p = sub.add_parser(
        "surface",
        help="loss plane through three runs, or a random slice around one",
        description="Evaluate train/test loss and accuracy on a grid: the plane through three "
        "runs (or two runs and a connect path's bend, with --path), or filter-normalised random "
        "directions around one run (--around). Writes OUT/surface.json and OUT/surface.png.",
    )
    p.add_argument("runs", nargs="*", help="RUN_A RUN_B RUN_C (or RUN_A RUN_B with --path)")
    p.add_argument("--around", default=None, metavar="RUN", help="random slice around this run")
    p.add_argument(
        "--path", default=None, metavar="DIR", help="an `isthmus connect` output to draw"
    )
    p.add_argument("--grid", type=c.positive, default=31, help="points per axis [31]")
    p.add_argument(
        "--dims", type=int, default=2, choices=[1, 2], help="random slice: 1-D or 2-D [2]"
    )
    p.add_argument("--span", type=float, default=1.0, help="random slice range [-span, span] [1]")
    p.add_argument(
        "--batch-size",
        type=c.positive,
        default=None,
        help="examples per forward pass [MLP: all; CNN: 1000]",
    )
    p.add_argument(
        "--chunk",
        type=c.positive,
        default=None,
        help="grid points per batched call [MLP: 64; CNN: 16]",
    )
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted grid (OUT/.checkpoint)"
    )
    p.set_defaults(fn=cmd_surface)
