"""`isthmus surface`: loss planes through three runs and random slices around one
(`surface.slice_through`, `surface.evaluate_surface`).

Writes DIR/surface.json and DIR/surface.png; the grid so far is kept in DIR/.checkpoint after every
chunk (--resume continues, with the same --chunk).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import _common as c


def cmd_surface(args) -> None:
    from .. import plot
    from ..errors import IsthmusError
    from ..io import file_sha256, inputs_record, load_runs, write_json
    from ..params import bn_subset, has_bn
    from ..paths import load_path
    from ..paths.connect import eval_sizes
    from ..surface import evaluate_surface, slice_through

    runs = [args.around] if args.around else list(args.runs)
    if args.around and args.runs:
        raise IsthmusError("give either three runs (a plane) or --around RUN (a random slice)")
    if not args.around and not (len(runs) == 3 or (len(runs) == 2 and args.path)):
        raise IsthmusError(
            "surface needs RUN_A RUN_B RUN_C, or RUN_A RUN_B --path CONNECT_DIR (the plane "
            f"through A, the path's first bend and B), or --around RUN; got {len(runs)} run(s)"
        )
    dev = c.device(args.device)
    loaded = load_runs(runs, dev)
    model = loaded[0].model
    named = [(r, run.params) for r, run in zip(runs, loaded, strict=True)]
    path = load_path(args.path, dev, named) if args.path else None
    sl = slice_through(
        [r.params for r in loaded], [Path(r).name or r for r in runs],
        path=path if len(runs) == 2 else None, dims=args.dims, seed=args.seed, span=args.span,
    )  # fmt: skip
    data = c.load_data(args, loaded[0].config)
    batch, chunk = eval_sizes(model, data.x_train, args.batch_size, args.chunk)
    out = c.new_output(args.out, [*runs, *([args.path] if args.path else [])], args)
    res = evaluate_surface(
        model, sl, data, grid=args.grid, batch_size=batch, chunk=chunk,
        bn_x=bn_subset(data.x_train) if has_bn(model) else None,
        paths={path.method: path} if path is not None else {},
        checkpoint=out / ".checkpoint" / "surface.json", resume=args.resume,
    )  # fmt: skip
    res = replace(res, extra={**res.extra, "runs": runs, "seed": args.seed})
    made = [(args.path, file_sha256(Path(args.path) / "path.safetensors"))] if path else []
    inputs = inputs_record(named, c.data_record(args, loaded[0].config), made)
    write_json(out / "surface.json", res.to_json() | {"inputs": inputs})
    fig = plot.surface(res, out / "surface.png", pdf=args.pdf)
    flat = [v for row in res.train_loss for v in (row if isinstance(row, list) else [row])]
    print(f"{sl.kind} surface, {len(flat)} points: train loss {min(flat):.4f} .. {max(flat):.4f}")
    print(f"wrote {out / 'surface.json'} | {fig}")


def register(sub) -> None:
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
    p.add_argument("--grid", type=c.bounded(2, 1001), default=31, help="points per axis [31]")
    p.add_argument(
        "--dims", type=int, default=2, choices=[1, 2], help="random slice: 1-D or 2-D [2]"
    )
    p.add_argument(
        "--span",
        type=c.real(0, 1e6, open_lo=True),
        default=1.0,
        help="random slice range [-span, span] [1]",
    )
    c.add_eval_sizes(p, points="grid points")
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted grid (OUT/.checkpoint)"
    )
    p.set_defaults(fn=cmd_surface)
