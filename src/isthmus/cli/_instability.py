"""`isthmus instability`: the instability curve of training (Frankle et al. 2020,
`instability.instability`; docs/instability.md): parse, call, draw, print."""

from __future__ import annotations

import argparse

from . import _common as c
from ._train import add_model_train, configs


def steps(text: str) -> list[int]:
    """argparse type: comma-separated optimiser steps >= 0 (e.g. 0,10,100)."""
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected optimiser steps separated by commas (e.g. 0,10,100), got {text!r}"
        ) from None
    if not ks or min(ks) < 0:
        raise argparse.ArgumentTypeError(f"spawn steps must be integers >= 0, got {text!r}")
    return ks


def cmd_instability(args) -> None:
    from .. import plot
    from ..instability import RESULT_FILE, InstabilityConfig, instability

    out = c.new_output(args.out, [], args)
    data = c.load_data(args)
    mcfg, tcfg = configs(args, data)
    cfg = InstabilityConfig(tuple(args.spawn_at), args.copies, args.threshold, args.points)
    res = instability(
        mcfg, data, tcfg, cfg, args.seed, out=out, resume=args.resume,
        data_spec=c.data_spec(args),
    )  # fmt: skip
    per = res.settings["steps_per_epoch"]
    print(f"{per} optimiser steps per epoch, {res.settings['total_steps']} in all")
    for s in res.spawns:
        m = s["mean"]
        print(
            f"spawn step {s['step']} (epoch {s['epoch']:.2f}): error barrier test "
            f"{100 * m['test_error']:.2f}% train {100 * m['train_error']:.2f}% | loss barrier "
            f"test {m['test_loss']:.3f} train {m['train_loss']:.3f}"
        )
    k = res.stable_step
    pct = 100 * args.threshold
    stable = f"from spawn step {k}" if k is not None else "at no spawn step measured"
    print(f"stable (test-error barrier < {pct:g}% from there on): {stable}")
    fig = plot.instability_curve(res.to_json(), out / "instability", pdf=args.pdf)
    print(f"wrote {out / RESULT_FILE} | {fig}")


def register(sub) -> None:
    p = sub.add_parser(
        "instability",
        help="instability of training against the step where copies split (Frankle et al. 2020)",
        description="Train one net; at each spawn step (optimiser step) continue --copies copies "
        "of it to the end of the same schedule, each with its own data order, and measure the "
        "error and loss barriers of the straight line between every pair of copies. Writes "
        "OUT/instability.json, OUT/instability.png, the copies (OUT/spawn_KKKKKK/c) and a "
        "checkpoint after every spawn step (--resume skips the finished ones).",
    )
    c.add_data(p)
    c.add_seed(p)
    add_model_train(p)
    p.add_argument(
        "--spawn-at",
        type=steps,
        required=True,
        metavar="K1,K2,...",
        help="optimiser steps at which the copies split from the parent (0: at initialisation)",
    )
    p.add_argument("--copies", type=c.bounded(2, 64), default=2, help="copies per spawn step [2]")
    p.add_argument(
        "--threshold",
        type=c.real(0, 1, open_lo=True),
        default=0.02,
        help="stable when the test-error barrier is below this fraction [0.02]",
    )
    p.add_argument(
        "--points", type=c.bounded(2, 10_000), default=21, help="t values on each line [21]"
    )
    c.add_pdf(p)
    c.add_output(p)
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted analysis in --out"
    )
    p.set_defaults(fn=cmd_instability)
