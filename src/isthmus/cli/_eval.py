"""`isthmus eval`: train/test loss and accuracy of a run, on its own data or another set."""

from __future__ import annotations

from pathlib import Path

from . import _common as c


def cmd_eval(args) -> None:
    from ..io import load_run, write_json
    from ..params import bn_subset, evaluate

    run = load_run(args.run, c.device(args.device))
    out = c.new_file(args.out, Path(args.run) / "eval.json", args.overwrite)
    data = c.load_data(args, run.config)
    kw = dict(loss=data.loss, batch_size=None, bn_x=bn_subset(data.x_train))
    tr = evaluate(run.model, [run.params], data.x_train, data.y_train, **kw)
    te = evaluate(run.model, [run.params], data.x_test, data.y_test, **kw)
    res = {
        "data": data.name,
        "train_loss": float(tr.loss[0]),
        "train_acc": float(tr.acc[0]),
        "test_loss": float(te.loss[0]),
        "test_acc": float(te.acc[0]),
    }
    write_json(out, res)
    print(
        f"{args.run} on {data.name}: train loss {res['train_loss']:.4f} acc {res['train_acc']:.4f} | "
        f"test loss {res['test_loss']:.4f} acc {res['test_acc']:.4f}  -> {out}"
    )


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run on its data (or another data set)",
        description="Print and write train/test loss and accuracy (to RUN/eval.json, or --out).",
    )
    p.add_argument("run", help="run directory")
    c.add_data(p, default=None)
    p.add_argument("--out", default=None, help="JSON file to write [RUN/eval.json]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(fn=cmd_eval)
