"""`isthmus subspace`: a low-loss simplicial complex (`subspace.build_subspace`), evaluated at its
vertices, uniform samples, along its edges and the straight lines between the given runs.

  isthmus subspace RUN RUN ... --connectors M   N runs joined by M shared connectors (Benton et al.)
  isthmus subspace RUN --grow K                  a K-simplex grown from one run (SPRO)
  isthmus subspace --from-scratch K --model ...  a K-simplex trained from scratch (Wortsman et al.)

Writes DIR/subspace.safetensors, DIR/subspace.json (docs/subspaces.md) and DIR/subspace.png; the
fit is checkpointed every epoch in DIR/.checkpoint (--resume continues).
"""

from __future__ import annotations

from ..errors import IsthmusError
from . import _common as c
from ._model import add_model, model_config


def cmd_subspace(args) -> None:
    from .. import plot
    from ..io import load_runs
    from ..subspace.build import build_subspace, fit_config

    out = c.new_output(args.out, args.runs, args)
    method = "grow" if args.grow else "scratch" if args.from_scratch else "join"
    if args.grow and args.from_scratch:
        raise IsthmusError("--grow and --from-scratch exclude each other; choose one")
    cfg = fit_config(
        method, epochs=args.epochs, optimizer=args.optimizer, lr=args.lr,
        batch_size=args.batch_size, samples=args.samples, penalty_every=args.penalty_every,
    )  # fmt: skip
    runs = load_runs(args.runs, c.device(args.device)) if args.runs else []
    data = c.load_data(args, runs[0].config if runs else None)
    mcfg = model_config(args, data) if method == "scratch" else None
    doc = build_subspace(
        method, out, data, runs=runs, k=args.grow or args.from_scratch or 2,
        connectors=args.connectors, model_cfg=mcfg, cfg=cfg,
        penalty=args.cosine if method == "scratch" else args.volume, samples=args.eval_samples,
        edge_points=args.edge_points, seed=args.seed, resume=args.resume,
        data_spec=None if args.data is None else c.data_spec(args),
    )  # fmt: skip
    fig = plot.subspace_losses(doc, out / "subspace.png", pdf=args.pdf)
    s, sol, line = doc["sample_loss"], doc["solution_loss"], doc["line_max_loss"]
    print(
        f"{method}: runs' train loss {', '.join(f'{v:.4f}' for v in sol) or 'none'} | other "
        f"vertices {', '.join(f'{v:.4f}' for v in doc['connector_loss'])}"
    )
    print(
        f"{doc['samples']['count']} uniform samples: max {s['max']:.4f}, mean {s['mean']:.4f}, "
        f"q0.99 {s['quantiles']['0.99']:.4f}"
        + ("" if line is None else f" | straight lines between runs: max {line:.4f}")
    )
    print(f"wrote {out / 'subspace.json'} | {out / 'subspace.safetensors'} | {fig}")


def register(sub) -> None:
    p = sub.add_parser(
        "subspace",
        help="a low-loss simplicial complex joining runs, grown from one, or from scratch",
        description="Join N runs of one architecture by M shared connectors (one simplex per run: "
        "the run plus every connector), grow a K-simplex from one run (--grow K), or train one "
        "from scratch (--from-scratch K); evaluate it at its vertices, uniform samples, along every "
        "edge and the straight lines between runs. Writes OUT/subspace.json, "
        "OUT/subspace.safetensors, OUT/subspace.png. Defaults per method: docs/subspaces.md.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run directories (the fixed solutions)")
    p.add_argument("--connectors", type=c.bounded(1, 100), default=2, help="connectors M [2]")
    p.add_argument("--grow", type=c.bounded(1, 100), default=None, metavar="K",
                   help="grow a K-simplex from the one RUN (SPRO)")  # fmt: skip
    p.add_argument("--from-scratch", type=c.bounded(1, 100), default=None, metavar="K",
                   help="train a K-simplex from scratch (no RUN; --model, --data)")  # fmt: skip
    add_model(p)  # the architecture of --from-scratch, as `isthmus train` takes it
    p.add_argument("--epochs", type=c.positive, default=None, help="training epochs [method's]")
    p.add_argument("--lr", type=c.real(0, 100, open_lo=True), default=None, help="[method's]")
    c.add_optimizer(p)
    p.add_argument("--batch-size", type=c.positive, default=None, help="minibatch [128]")
    p.add_argument("--samples", type=c.bounded(1, 4096), default=None,
                   help="members drawn per minibatch in training [method's]")  # fmt: skip
    p.add_argument("--volume", type=c.real(0, 1e6), default=None,
                   help="weight of -log-volume (join, grow) [1e-6]")  # fmt: skip
    p.add_argument("--penalty-every", type=c.bounded(1, 10**6), default=None, metavar="K",
                   help="penalty every K-th step, K times its weight [join 16, else 1]")  # fmt: skip
    p.add_argument("--cosine", type=c.real(0, 1e6), default=None,
                   help="weight of the mean cos^2 between vertices (from scratch) [1]")  # fmt: skip
    p.add_argument("--eval-samples", type=c.bounded(1, 10**6), default=256,
                   help="evaluated uniform samples [256]")  # fmt: skip
    p.add_argument("--edge-points", type=c.bounded(2, 10_000), default=21,
                   help="evaluated points per edge and line [21]")  # fmt: skip
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted fit")
    p.set_defaults(fn=cmd_subspace)
