"""Race isthmus against the reference mode-connectivity code itself (used by
`bench_paths.py --reference DIR`; also runnable alone: `python benchmarks/reference_race.py DIR`).

The reference (timgaripov/dnn-mode-connectivity, Garipov et al. 2018) is not installable and does
not run on current Python and torch as it stands, so the race copies the given checkout to a
temporary folder and edits the copy (never the user's checkout):

  1. utils.py: `.cuda(async=True)` -> `.to(DEVICE, non_blocking=True)`. `async` has been a
     keyword since Python 3.7, so the file is a syntax error as published; the tensors went to CUDA
     unconditionally, now to DEVICE, which the edit defines after `import torch` from the
     REFERENCE_DEVICE environment variable (the race sets it to the benchmark's device).
  2. The data module (data.py) is not imported: it imports torchvision and reads CIFAR-10 from
     disk. The race builds the same kind of loaders itself (`torch.utils.data.DataLoader` over the
     benchmark's tensors, batch 128 as the reference's default, in order for evaluation and
     shuffled for training; no worker processes, the tensors are in memory).
  3. eval_curve.py and train.py are not run as scripts (they also need checkpoints on disk,
     tabulate, and call .cuda() unconditionally): the child process runs their loops line for
     line with the reference's own modules (curves.CurveNet, models.ConvFC, utils.update_bn /
     utils.test / utils.train, curves.l2_regularizer with their default weight decay 1e-4).

The work (same for both tools): Bezier curve with one bend (the reference's num_bends=3 counts the
endpoints), convfc, three random nets (A, the bend, B) and 2,000 + 200 CIFAR-shaped Gaussian
images saved once to a file that both children load. Per tool and repeat, one process evaluates
the curve at `points` values of t (train and test; the reference also computes the curve's length
`dl` and the regularised loss, as eval_curve.py does) and another runs one epoch of Bezier fitting
(batch 128, one t per minibatch, SGD lr 0.01 momentum 0.9, endpoints fixed: train.py's defaults
with --fix_start --fix_end). The processes alternate reference / isthmus so that load drifts hit
both alike; each reports its seconds and its peak resident set size (`ru_maxrss`, the whole
process: interpreter, torch, data and work). Both epoch children build a throw-away optimizer
before their clocks start, since torch imports its compiler on the first one. isthmus runs at
its API defaults (`evaluate_path(model, path, data, points=61)`; `fit_curve` with
`FitConfig(epochs=1, batch_size=128, samples=1, lr=0.01, schedule="constant")`). The train
losses of the two agree (the reference's unregularised `nll` against isthmus's train loss): the
maximum difference is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

EDITED = ("utils.py",)
DEVICE_LINE = (
    "\nDEVICE = torch.device(os.environ.get('REFERENCE_DEVICE', "
    "'cuda' if torch.cuda.is_available() else 'cpu'))  # isthmus race: edit 1\n"
)


def prepare(reference: str | Path, into: str | Path) -> Path:
    """Copy the reference checkout to `into`/dnnmc and apply the documented edits to the copy."""
    src = Path(reference)
    missing = [f for f in ("curves.py", "utils.py", "models/convfc.py") if not (src / f).is_file()]
    if missing:
        raise SystemExit(
            f"{src}: not a dnn-mode-connectivity checkout ({', '.join(missing)} missing); "
            "clone https://github.com/timgaripov/dnn-mode-connectivity and pass its folder"
        )
    dst = Path(into) / "dnnmc"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    utils = (dst / "utils.py").read_text()
    utils, n = re.subn(r"\.cuda\(async=True\)", ".to(DEVICE, non_blocking=True)", utils)
    if n == 0 or "import torch\n" not in utils:
        raise SystemExit(f"{src}/utils.py: not the expected version (no .cuda(async=True) calls)")
    utils = utils.replace("import torch\n", "import torch\n" + DEVICE_LINE, 1)
    (dst / "utils.py").write_text(utils)
    return dst


def make_inputs(path: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """The three nets (convfc state dicts in isthmus's key order) and the data, for both tools."""
    from isthmus.models import ModelConfig, build_model
    from isthmus.params import params_of

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    cfg = ModelConfig(kind="convfc", input_shape=(3, 32, 32), num_classes=10)
    torch.manual_seed(seed)
    nets = [params_of(build_model(cfg)) for _ in range(3)]
    torch.save({"x": x, "y": y, "n_train": n_train, "nets": nets}, path)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ----------------------------------------------------------------------------- children


def run_reference(ref: Path, inputs: Path, work: str, points: int, device: str) -> dict:
    """The reference's own code: eval_curve.py's loop, or one epoch of train.py (see the doc)."""
    import numpy as np
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    os.environ["REFERENCE_DEVICE"] = device
    sys.path.insert(0, str(ref))
    import curves  # type: ignore[import-not-found]
    import models  # type: ignore[import-not-found]
    import utils  # type: ignore[import-not-found]

    d = torch.load(inputs)
    n = d["n_train"]
    train = TensorDataset(d["x"][:n], d["y"][:n])
    test = TensorDataset(d["x"][n:], d["y"][n:])
    dev = torch.device(device)
    torch.manual_seed(1)  # train.py's default seed
    arch = models.ConvFC
    model = curves.CurveNet(10, curves.Bezier, arch.curve, 3, True, True, arch.kwargs)
    for k, net in enumerate(d["nets"]):
        base = arch.base(num_classes=10, **arch.kwargs)
        base.load_state_dict(dict(zip(base.state_dict(), net.values(), strict=True)))
        model.import_base_parameters(base, k)
    model.to(dev)
    criterion = F.cross_entropy
    regularizer = curves.l2_regularizer(1e-4)
    if work == "eval":
        loaders = {
            "train": DataLoader(train, batch_size=128, shuffle=False),
            "test": DataLoader(test, batch_size=128, shuffle=False),
        }
        ts = np.linspace(0.0, 1.0, points)
        tr_nll, dl = np.zeros(points), np.zeros(points)
        t = torch.FloatTensor([0.0]).to(dev)
        previous = None
        t0 = time.perf_counter()
        for i, t_value in enumerate(ts):
            t.data.fill_(t_value)
            weights = model.weights(t)
            if previous is not None:
                dl[i] = np.sqrt(np.sum(np.square(weights - previous)))
            previous = weights.copy()
            utils.update_bn(loaders["train"], model, t=t)
            tr_res = utils.test(loaders["train"], model, criterion, regularizer, t=t)
            utils.test(loaders["test"], model, criterion, regularizer, t=t)
            tr_nll[i] = tr_res["nll"]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "train_loss": tr_nll.tolist()}
    loader = DataLoader(train, batch_size=128, shuffle=True)
    opt = torch.optim.SGD(
        filter(lambda p: p.requires_grad, model.parameters()), lr=0.01, momentum=0.9,
        weight_decay=0.0,
    )  # fmt: skip
    t0 = time.perf_counter()
    res = utils.train(loader, model, opt, criterion, regularizer)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "epoch_loss": res["loss"]}


def run_isthmus(
    inputs: Path, work: str, points: int, device: str, budget_mib: float | None = None
) -> dict:
    """isthmus at its API defaults on the same nets and data (or, with `budget_mib`, at the
    sizes `params.eval_plan` chooses for that memory budget: a point of the speed/memory curve)."""
    from isthmus.data import Dataset
    from isthmus.models import ModelConfig, build_model
    from isthmus.paths import BezierPath, FitConfig, evaluate_path, fit_curve

    d = torch.load(inputs)
    dev = torch.device(device)
    n = d["n_train"]
    x, y = d["x"].to(dev), d["y"].to(dev)
    data = Dataset("cifar-shaped", x[:n], y[:n], x[n:], y[n:], 10, "classification", (3, 32, 32))
    model = build_model(ModelConfig(kind="convfc", input_shape=(3, 32, 32), num_classes=10))
    model.to(dev)
    a, bend, b = ({k: v.to(dev) for k, v in net.items()} for net in d["nets"])
    path = BezierPath(a, b, [bend])
    t0 = time.perf_counter()
    if work == "eval":
        kw: dict = {}
        if budget_mib is not None:
            from isthmus.params import eval_plan

            plan = eval_plan(model, data.x_train, int(budget_mib * 2**20))
            kw = dict(batch_size=plan.batch_size, chunk=plan.chunk)
            t0 = time.perf_counter()  # the plan is not part of the work
        res = evaluate_path(model, path, data, points=points, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - t0, "train_loss": res.train_loss, **kw}
    cfg = FitConfig(epochs=1, batch_size=128, samples=1, lr=0.01, schedule="constant")
    fit_curve(model, path, data, cfg, progress=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0}


def child(args) -> None:
    if args.work == "epoch":
        # torch imports its compiler (torch._dynamo, seconds and tens of MB) when the first
        # optimizer is built: both tools pay that before their clocks start
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    if args.tool == "reference":
        out = run_reference(Path(args.ref), Path(args.inputs), args.work, args.points, args.device)
    else:
        out = run_isthmus(Path(args.inputs), args.work, args.points, args.device, args.budget)
    out["peak_rss_bytes"] = _peak_rss_bytes()
    print("RESULT " + json.dumps(out))


# ----------------------------------------------------------------------------- the race


def _spawn(
    tool: str, work: str, ref: Path, inputs: Path, points: int, device: str, budget=None
) -> dict:
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ)
    if tool == "isthmus":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--tool", tool,
           "--work", work, "--ref", str(ref), "--inputs", str(inputs), "--points", str(points),
           "--device", device] + ([] if budget is None else ["--budget", str(budget)])  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{tool} {work} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def race(
    reference: str | Path,
    *,
    n_train: int = 2000,
    n_test: int = 200,
    points: int = 61,
    repeats: int = 4,
    device: str = "cpu",
    budgets: list[float] | None = None,
) -> dict:
    """Alternating child processes; medians over `repeats`. Returns the table's numbers; with
    `budgets` (MiB), also isthmus's path evaluation at each budget's `eval_plan` (the curve)."""
    with tempfile.TemporaryDirectory(prefix="isthmus-race-") as tmp:
        ref = prepare(reference, tmp)
        inputs = Path(tmp) / "inputs.pt"
        make_inputs(inputs, n_train, n_test)
        runs: dict[tuple[str, str], list[dict]] = {}
        for _ in range(repeats):
            for work in ("eval", "epoch"):
                for tool in ("reference", "isthmus"):
                    r = _spawn(tool, work, ref, inputs, points, device)
                    runs.setdefault((tool, work), []).append(r)
            for mib in budgets or []:
                r = _spawn("isthmus", "eval", ref, inputs, points, device, mib)
                runs.setdefault(("budget", str(mib)), []).append(r)
    med = lambda tool, work, key: statistics.median(r[key] for r in runs[(tool, work)])  # noqa: E731
    diff = max(
        abs(u - v)
        for ra, ri in zip(runs[("reference", "eval")], runs[("isthmus", "eval")], strict=True)
        for u, v in zip(ra["train_loss"], ri["train_loss"], strict=True)
    )
    out = {"device": device, "train": n_train, "test": n_test, "points": points,
           "repeats": repeats, "max_abs_loss_difference": diff}  # fmt: skip
    out["curve"] = [
        {
            "budget_mib": mib,
            "batch_size": runs[("budget", str(mib))][0]["batch_size"],
            "chunk": runs[("budget", str(mib))][0]["chunk"],
            "seconds_per_point": med("budget", str(mib), "seconds") / points,
            "peak_rss_bytes": med("budget", str(mib), "peak_rss_bytes"),
        }
        for mib in budgets or []
    ]
    for tool in ("reference", "isthmus"):
        out[tool] = {
            "seconds_per_point": med(tool, "eval", "seconds") / points,
            "seconds_per_epoch": med(tool, "epoch", "seconds"),
            "peak_rss_bytes_eval": med(tool, "eval", "peak_rss_bytes"),
            "peak_rss_bytes_epoch": med(tool, "epoch", "peak_rss_bytes"),
        }
    return out


def print_race(r: dict) -> None:
    ref, ist = r["reference"], r["isthmus"]
    print(
        f"reference race ({r['device']}, {torch.get_num_threads()} threads, convfc Bezier one bend, "
        f"{r['train']} + {r['test']} CIFAR-shaped images, {r['points']} points, median of "
        f"{r['repeats']} alternating runs; max |train loss difference| "
        f"{r['max_abs_loss_difference']:.1e})"
    )
    print("| work | reference | isthmus | ratio isthmus / reference |\n|---|---|---|---|")
    for label, key, unit, scale in (
        ("seconds per path point, API defaults", "seconds_per_point", "s", 1),
        ("Bezier epoch, one t per batch", "seconds_per_epoch", "s", 1),
        ("peak memory (RSS), path evaluation", "peak_rss_bytes_eval", "GB", 1e9),
        ("peak memory (RSS), Bezier epoch", "peak_rss_bytes_epoch", "GB", 1e9),
    ):
        a, b = ref[key] / scale, ist[key] / scale
        print(f"| {label} | {a:.3g} {unit} | {b:.3g} {unit} | {b / a:.2f} |")
    if r.get("curve"):
        print("\nisthmus path evaluation along the memory budget of params.eval_plan "
              "(default 256 MiB on CPU):")  # fmt: skip
        print("| budget MiB | batch | chunk | s per point | peak RSS GB |\n|---|---|---|---|---|")
        for c in r["curve"]:
            print(f"| {c['budget_mib']:g} | {c['batch_size']} | {c['chunk']} | "
                  f"{c['seconds_per_point']:.3g} | {c['peak_rss_bytes'] / 1e9:.3g} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference", nargs="?", help="a dnn-mode-connectivity checkout")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tool", choices=("reference", "isthmus"), help=argparse.SUPPRESS)
    ap.add_argument("--work", choices=("eval", "epoch"), help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--points", type=int, default=61)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    ap.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budgets", default=None, help="also isthmus at these eval_plan budgets (MiB)")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if not args.reference:
        ap.error("give the reference checkout")
    sizes = dict(n_train=64, n_test=16, points=3, repeats=1) if args.quick else {}
    kw = dict(points=args.points, repeats=args.repeats) | sizes
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else None
    print_race(race(args.reference, device=args.device, budgets=budgets, **kw))


if __name__ == "__main__":
    main()
