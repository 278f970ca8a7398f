"""Curvature benchmark (not a test): top-5 Hessian eigenvalues and Hutchinson's trace, isthmus
against the `pyhessian` package, and the wedge model's learning-rate sweep, in one run.

Models, on the whole train split in batches of `--batch` examples (both tools get the same
batches; the mean loss over the split, as in training):
  * mlp: an MLP depth 3 x width 256 trained on the full mnist1d train split with the project's
    default training (`TrainConfig()`, seed 0);
  * convfc: the random convfc net and the 2,000 CIFAR-shaped synthetic images of
    `bench_paths.py` (its `setup`, point A).

Reference: the top-5 eigenvalues to a tiny residual. Where the Hessian fits in memory (the
`--quick` MLP) it is formed explicitly in float64 and diagonalised. Otherwise Lanczos with full
reorthogonalisation (`isthmus.curvature.lanczos`) runs until the relative Ritz residuals fall below
`--ref-tol` (x the largest |Ritz value|), with Hessian-vector products in float64 for the MLP and
in float32 for convfc (float64 convolutions on CPU are far slower); the Ritz vectors are then
certified in float64: each reference value is the float64 Rayleigh quotient y^T H y of a unit Ritz
vector y, and its float64 residual ||H y - (y^T H y) y|| bounds its distance to an eigenvalue of H
(printed as the largest relative bound; it must be far below the 1% tested). The reference is not
timed. In `--quick`, the explicit Hessian also checks the Lanczos reference.

Accuracy, then time: each tool is run on a ladder of settings, cheapest first, each run from
scratch and timed; the first one whose five eigenvalues are all within 1% of the reference is the
cheapest setting on the ladder, and its time is the tool's time (the cheaper failed runs are
printed, not counted). isthmus: `top_eigenvalues(op, 5, max_steps=m)` (Lanczos steps =
Hessian-vector products; it stops earlier where its default Ritz-residual tolerance 1e-3 is met)
with m the fewest steps within 1%, read off one untimed Lanczos run from the same start (a run
capped at m steps is the first m steps of it; the timed run is checked again, and should it miss,
larger m follow). pyhessian: `hessian(model, criterion, dataloader=...).eigenvalues(
top_n=5, maxIter=--max-iter, tol=t)` for t on the ladder (power iteration with deflation, as in
its README; tol is its only accuracy control, maxIter a cap per eigenvalue; a run that used the
whole cap ends the ladder). The trace: both tools with the same number of Rademacher probes
(pyhessian `.trace(maxIter=probes, tol=0)`, so that it does not stop early); both estimators are
unbiased, so their estimates should agree within a few standard errors. Peak memory: the peak resident set size (Linux VmHWM,
reset through /proc/self/clear_refs before each call, after gc and malloc_trim) minus the RSS at
the start of the call, in MiB. Counting Hessian-vector products (HVPs) explains the times.

Then the wedge sweep of `bench_wedges.py` (its own `main`, same process, same arguments).

pyhessian is not a dependency of isthmus: `pip install --no-deps pyhessian` (its `density` calls
`torch.eig`, removed from torch; only eigenvalues and trace are used here). Without it the
isthmus parts run alone. `--quick` shrinks everything (seconds) to check that the script runs.
The measurement, on 2 CPU cores:

    OMP_NUM_THREADS=2 python benchmarks/bench_curvature.py --out bench_curvature.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import sys
import time
import warnings
from dataclasses import dataclass, replace

import bench_paths
import bench_wedges
import torch
from torch.func import functional_call

from isthmus.curvature import (
    HessianOperator,
    LanczosState,
    hessian_operator,
    hutchinson_trace,
    lanczos,
    top_eigenvalues,
)
from isthmus.data import load
from isthmus.io import write_json
from isthmus.models import ModelConfig, build_model
from isthmus.params import flatten, loss_sum, to, unflatten
from isthmus.seeding import generator
from isthmus.train import TrainConfig, train

TOP = 5
ACCURACY = 0.01  # all top-5 eigenvalues within 1% of the reference
ISTHMUS_STEPS = (8, 10, 12, 14, 16, 18, 22, 27, 33, 40, 50, 60, 80, 100, 150, 200, 300)
PYHESSIAN_TOLS = (1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5)

try:  # optional: the tool compared against
    from pyhessian import hessian as PyHessian
except ImportError:
    PyHessian = None


# ----------------------------------------------------------------------------- measuring


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_kib(field: str) -> int | None:
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def measured(fn):
    """(seconds, peak RSS increase in MiB or None, fn()): peak RSS from VmHWM, reset first."""
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS (Linux >= 4.0)
        start = _rss_kib("VmRSS")
    except OSError:
        start = None
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM") if start is not None else None
    return seconds, (None if peak is None else (peak - start) / 1024), out


def counted(op: HessianOperator) -> tuple[HessianOperator, list[int]]:
    """The same operator, counting its HVPs."""
    n = [0]

    def matvec(v):
        n[0] += 1
        return op.matvec(v)

    return replace(op, matvec=matvec), n


def rel_error(vals: list[float], ref: list[float]) -> float:
    got = sorted(vals, reverse=True)
    return max(abs(a - b) / abs(b) for a, b in zip(got, ref, strict=True))


# ----------------------------------------------------------------------------- the two cases


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    params: dict
    data: object  # isthmus Dataset
    explicit: bool  # the reference Hessian fits in memory
    ref_dtype: torch.dtype


def mlp_case(quick: bool) -> Case:
    data = load("mnist1d")
    width, cfg = 256, TrainConfig()
    if quick:
        data, width, cfg = data.subset(200, 50), 12, TrainConfig(epochs=30)
    mcfg = ModelConfig(kind="mlp", depth=3, width=width, input_shape=data.input_shape)
    res = train(mcfg, data, cfg, seed=0, progress=False)
    model = build_model(mcfg)
    model.load_state_dict(res.params)
    m = res.metrics
    print(f"mlp: depth 3 x width {width}, {len(data.x_train)} mnist1d train examples, trained "
          f"{cfg.epochs} epochs (seed 0): train loss {m['train_loss']:.4f}, test accuracy "
          f"{m['test_acc']:.3f}")  # fmt: skip
    return Case("mlp", model, res.params, data, quick, torch.float64)


def convfc_case(quick: bool) -> Case:
    n_train = 16 if quick else 2000
    model, nets, data = bench_paths.setup("convfc", torch.device("cpu"), n_train, 8)
    model.load_state_dict(nets[0])
    print(f"convfc: random net A of bench_paths, {n_train} CIFAR-shaped images")
    return Case("convfc", model, nets[0], data, False, torch.float32)


# ----------------------------------------------------------------------------- the reference


def explicit_reference(case: Case) -> dict:
    model = case.model.double()
    p = to(case.params, dtype=torch.float64)
    keys = [k for k, _ in model.named_parameters()]
    x, y, n = case.data.x_train.double(), case.data.y_train, len(case.data.x_train)

    def f(v):
        return loss_sum(functional_call(model, unflatten(v, p, keys), (x,)), y, "ce")[0] / n

    H = torch.func.hessian(f)(flatten(p, keys))
    case.model.float()
    ev = torch.linalg.eigvalsh(H)
    return {
        "method": f"explicit float64 Hessian ({H.shape[0]} x {H.shape[0]}), eigvalsh",
        "eigenvalues": ev.flip(0)[:TOP].tolist(),
        "trace": float(ev.sum()),
        "bottom": float(ev[0]),
    }


def lanczos_reference(case: Case, batch: int, tol: float, max_steps: int) -> dict:
    """Lanczos to relative Ritz residual `tol`, then every Ritz vector certified in float64."""
    model = case.model.to(case.ref_dtype)
    op = hessian_operator(model, to(case.params, dtype=case.ref_dtype), case.data, batch_size=batch)
    gen = torch.Generator().manual_seed(12345)  # a start unrelated to either tool's
    v0 = torch.randn(op.dim, generator=gen, dtype=torch.float64).to(op.dtype)
    st = LanczosState()
    steps = 2 * TOP + 8
    while True:
        st = lanczos(op, steps, v0, st)
        theta, S = torch.linalg.eigh(st.tridiagonal())
        m = len(st.alpha)
        last = st.beta[m - 1] if len(st.beta) >= m and not st.exhausted else 0.0
        top = torch.argsort(theta, descending=True)[:TOP]
        res = (last * S[-1, top]).abs()
        if bool((res <= tol * theta.abs().max()).all()) or st.exhausted or m >= max_steps:
            break
        steps = m + 5
    ritz = [sum(float(S[i, j]) * q.double() for i, q in enumerate(st.basis[:m])) for j in top]
    model64 = case.model.double()
    op64 = hessian_operator(model64, to(case.params, dtype=torch.float64), case.data,
                            batch_size=batch)  # fmt: skip
    vals, bounds = [], []
    for yv in ritz:
        yv = yv / yv.norm()
        hy = op64.matvec(yv)
        rq = float(yv @ hy)
        vals.append(rq)
        bounds.append(float((hy - rq * yv).norm()))
    case.model.float()
    order = sorted(range(TOP), key=lambda i: -vals[i])
    vals, bounds = [vals[i] for i in order], [bounds[i] for i in order]
    return {
        "method": f"Lanczos ({m} steps, {op.dtype} HVPs, Ritz residual <= {tol:g} x |theta|max), "
        "values = float64 Rayleigh quotients of the Ritz vectors",
        "eigenvalues": vals,
        "float64_residuals": bounds,
        "max_relative_bound": max(b / abs(v) for b, v in zip(bounds, vals, strict=True)),
        "steps": m,
        "bottom": float(theta.min()),
    }


# ----------------------------------------------------------------------------- the tools


def isthmus_scan(case: Case, batch: int, ref: list[float], max_steps: int) -> int | None:
    """Untimed: the fewest Lanczos steps whose top-5 Ritz values are all within ACCURACY of `ref`,
    read off one run from top_eigenvalues's own start (stream (seed 0, 0, 67), a random unit
    vector). A run capped at m steps is exactly the first m steps of this one (same start, same
    arithmetic), so one scan replaces a ladder of runs; the timed run then checks it."""
    op = hessian_operator(case.model, case.params, case.data, batch_size=batch)
    v = torch.randn(op.dim, generator=generator(0, 0, 67), dtype=torch.float64)
    v0 = (v / v.norm()).to(op.device, op.dtype)
    st = LanczosState()
    for m in range(TOP, min(max_steps, op.dim) + 1):
        st = lanczos(op, m, v0, st)
        theta = torch.linalg.eigvalsh(st.tridiagonal())
        if len(theta) >= TOP and rel_error(theta.flip(0)[:TOP].tolist(), ref) <= ACCURACY:
            return m
        if st.exhausted:
            break
    return None


def isthmus_eigen(case: Case, batch: int, steps: int) -> dict:
    op, n = counted(hessian_operator(case.model, case.params, case.data, batch_size=batch))
    eig = top_eigenvalues(op, TOP, tol=1e-3, max_steps=steps, seed=0)
    return {"eigenvalues": eig.values, "hvps": n[0], "steps": eig.steps}


def isthmus_trace(case: Case, batch: int, probes: int) -> dict:
    op, n = counted(hessian_operator(case.model, case.params, case.data, batch_size=batch))
    t = hutchinson_trace(op, probes, seed=0)
    return {"estimate": t.estimate, "stderr": t.stderr, "hvps": n[0]}


def _pyhessian(case: Case, batch: int):
    """pyhessian as its README uses it, on a list of the same batches as its `dataloader` (no
    DataLoader collation cost, in its favour). Compatibility shim for torch 2.13, inside this
    benchmark: its repeated `backward(create_graph=True)` warns about a reference cycle through
    `.grad` on every HVP; the warning is silenced here, and the gradients it leaves on the module
    are dropped after each call (see `_clear`)."""
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")
    case.model.load_state_dict(case.params)
    x, y = case.data.x_train, case.data.y_train
    loader = [(x[s : s + batch], y[s : s + batch]) for s in range(0, len(x), batch)]
    h = PyHessian(case.model, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
    n = [0]
    hv = h.dataloader_hv_product

    def count(v):
        n[0] += 1
        return hv(v)

    h.dataloader_hv_product = count  # counting HVPs only
    return h, n


def _clear(case: Case) -> None:
    case.model.zero_grad(set_to_none=True)


def pyhessian_eigen(case: Case, batch: int, tol: float, max_iter: int) -> dict:
    torch.manual_seed(0)  # its random starts come from the global generator
    h, n = _pyhessian(case, batch)
    vals, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=TOP)
    _clear(case)
    return {"eigenvalues": sorted(vals, reverse=True), "hvps": n[0]}


def pyhessian_trace(case: Case, batch: int, probes: int) -> dict:
    torch.manual_seed(0)
    h, n = _pyhessian(case, batch)
    vhv = torch.tensor(h.trace(maxIter=probes, tol=0.0), dtype=torch.float64)
    _clear(case)
    return {"estimate": float(vhv.mean()), "stderr": float(vhv.std() / math.sqrt(len(vhv))),
            "hvps": n[0]}  # fmt: skip


# ----------------------------------------------------------------------------- one model


def ladder(tool: str, setting: str, values, run, ref: list[float], cap: int) -> dict | None:
    """Cheapest setting first; the first run within ACCURACY of `ref` is the tool's result. A run
    that spent `cap` HVPs (every iteration budget used up) ends the ladder: a stricter setting
    would run the same iterations again."""
    for value in values:
        seconds, mib, r = measured(lambda v=value: run(v))
        err = rel_error(r["eigenvalues"], ref)
        r.update(tool=tool, setting=f"{setting} {value:g}", seconds=seconds, peak_mib=mib,
                 max_rel_error=err)  # fmt: skip
        ok = err <= ACCURACY
        print(f"  {tool:9s} {r['setting']:15s}: {r['hvps']:4d} HVPs, max rel. error {err:.2e}, "
              f"{seconds:8.2f} s" + ("  <- first within 1%" if ok else ""), flush=True)  # fmt: skip
        if ok:
            return r
        if r["hvps"] >= cap:
            print(f"  {tool}: the iteration cap ({cap} HVPs) was reached; stricter settings "
                  "would repeat the same run")  # fmt: skip
            break
    print(f"  {tool}: no setting on the ladder reached {ACCURACY:.0%}")
    return None


def floats(text: str, kind) -> list:
    return [kind(v) for v in text.split(",")]


def fmt_mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def bench(case: Case, args) -> dict:
    print(f"\n== {case.name}: reference", flush=True)
    ref = lanczos_reference(case, args.batch, args.ref_tol, args.ref_steps)
    if case.explicit:  # where it fits, the explicit Hessian is the reference, and checks Lanczos's
        lz = ref
        ref = explicit_reference(case) | {"lanczos_check": lz}
        diff = rel_error(lz["eigenvalues"], ref["eigenvalues"])
        ref["lanczos_vs_explicit"] = diff
    vals = ref["eigenvalues"]
    print(f"  {ref['method']}\n  top-{TOP}: " + ", ".join(f"{v:.6g}" for v in vals)
          + f"; smallest Ritz value {ref['bottom']:.4g}")  # fmt: skip
    if "lanczos_vs_explicit" in ref:
        print(f"  the Lanczos reference ({ref['lanczos_check']['steps']} steps) differs from it by "
              f"{ref['lanczos_vs_explicit']:.1e} at most (relative)")  # fmt: skip
    if "max_relative_bound" in ref:
        print(f"  float64 certificate: every value within {ref['max_relative_bound']:.1e} "
              "(relative) of an eigenvalue")  # fmt: skip
    row = {"model": case.name, "examples": len(case.data.x_train), "reference": ref}
    print(
        f"== {case.name}: top-{TOP} eigenvalues, the cheapest setting within 1% per tool",
        flush=True,
    )
    run = lambda m: isthmus_eigen(case, args.batch, m)  # noqa: E731
    m = isthmus_scan(case, args.batch, vals, args.scan_steps)
    print(f"  isthmus   scan (untimed): the top-{TOP} Ritz values are within 1% from step {m}")
    steps = [] if m is None else [m] + [s for s in ISTHMUS_STEPS if s > m]  # the rest: a fallback
    results = [ladder("isthmus", "max_steps", steps, run, vals, cap=10**9)]
    if PyHessian is not None:
        run = lambda t: pyhessian_eigen(case, args.batch, t, args.max_iter)  # noqa: E731
        tols = floats(args.pyhessian_tols, float)
        results.append(ladder("pyhessian", "tol", tols, run, vals, cap=TOP * args.max_iter))
    row["eigen"] = results
    probes = args.probes_mlp if case.name == "mlp" else args.probes_convfc
    print(f"== {case.name}: Hutchinson trace, {probes} Rademacher probes each", flush=True)
    traces = []
    tools = [("isthmus", isthmus_trace)] + ([("pyhessian", pyhessian_trace)] if PyHessian else [])
    for tool, fn in tools:
        seconds, mib, r = measured(lambda fn=fn: fn(case, args.batch, probes))
        r.update(tool=tool, seconds=seconds, peak_mib=mib, probes=probes)
        traces.append(r)
    if "trace" in ref:
        print(f"  exact trace (explicit Hessian): {ref['trace']:.6g}")
    row["trace"] = traces
    print_table(case, vals, results, traces)
    return row


def print_table(case: Case, ref: list[float], eigen: list, traces: list) -> None:
    print(f"\n{case.name} ({len(case.data.x_train)} examples), top-{TOP} eigenvalues; reference "
          + ", ".join(f"{v:.5g}" for v in ref))  # fmt: skip
    print(f"  {'tool':10s} {'setting':>15s} {'HVPs':>5s}  {'eigenvalues':44s} {'max rel err':>11s} "
          f"{'seconds':>8s} {'peak MiB':>8s}")  # fmt: skip
    for r in eigen:
        if r is None:
            continue
        ev = ", ".join(f"{v:.5g}" for v in r["eigenvalues"])
        print(f"  {r['tool']:10s} {r['setting']:>15s} {r['hvps']:5d}  {ev:44s} "
              f"{r['max_rel_error']:11.2e} {r['seconds']:8.2f} {fmt_mib(r['peak_mib']):>8s}")  # fmt: skip
    if len(eigen) == 2 and all(eigen):
        ratio = eigen[1]["seconds"] / eigen[0]["seconds"]
        print(f"  ratio pyhessian / isthmus seconds (top-{TOP} at 1%): {ratio:.1f}x")
    elif PyHessian is None:
        print("  pyhessian not installed (pip install --no-deps pyhessian): isthmus only")
    print(f"  {'trace':10s} {'probes':>15s} {'HVPs':>5s}  {'estimate +- stderr':44s} "
          f"{'':>11s} {'seconds':>8s} {'peak MiB':>8s}")  # fmt: skip
    for r in traces:
        est = f"{r['estimate']:.6g} +- {r['stderr']:.2g}"
        print(f"  {r['tool']:10s} {r['probes']:15d} {r['hvps']:5d}  {est:44s} {'':>11s} "
              f"{r['seconds']:8.2f} {fmt_mib(r['peak_mib']):>8s}")  # fmt: skip
    if len(traces) == 2:
        a, b = traces
        z = abs(a["estimate"] - b["estimate"]) / math.hypot(a["stderr"], b["stderr"])
        ratio = b["seconds"] / a["seconds"]
        print(f"  trace: estimates differ by {z:.1f} combined standard errors; "
              f"ratio pyhessian / isthmus seconds: {ratio:.1f}x")  # fmt: skip


def wedge_sweep(quick: bool) -> None:
    """bench_wedges.py's own main (same arguments as its command line), in this process."""
    print("\n== wedge model: learning-rate sweep (bench_wedges.py)", flush=True)
    argv = sys.argv
    sys.argv = ["bench_wedges.py"] + (["--quick"] if quick else [])
    try:
        bench_wedges.main()
    finally:
        sys.argv = argv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    ap.add_argument("--models", default=None, help="comma-separated: mlp,convfc [both; quick: mlp]")
    ap.add_argument("--batch", type=int, default=1000, help="examples per HVP forward pass")
    ap.add_argument("--max-iter", type=int, default=100, help="pyhessian maxIter per eigenvalue")
    ap.add_argument("--scan-steps", type=int, default=300, help="isthmus scan: step cap")
    ap.add_argument("--pyhessian-tols", default=",".join(f"{t:g}" for t in PYHESSIAN_TOLS),
                    help="pyhessian ladder: eigenvalues(tol=...), cheapest first")  # fmt: skip
    ap.add_argument("--ref-tol", type=float, default=1e-4, help="reference Ritz residual")
    ap.add_argument("--ref-steps", type=int, default=300, help="reference Lanczos step cap")
    ap.add_argument("--probes-mlp", type=int, default=100, help="trace probes, mlp")
    ap.add_argument("--probes-convfc", type=int, default=20, help="trace probes, convfc")
    ap.add_argument("--no-wedges", action="store_true", help="skip the wedge sweep")
    ap.add_argument("--skip-pyhessian", action="store_true", help="isthmus only, as if absent")
    ap.add_argument("--out", default=None, help="also write every number as JSON here")
    args = ap.parse_args()
    global PyHessian
    if args.skip_pyhessian:
        PyHessian = None
    if args.quick:
        args.batch, args.probes_mlp, args.probes_convfc = 64, 10, 4
        args.max_iter, args.ref_tol, args.ref_steps = 30, 1e-4, 60
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; pyhessian "
          + ("installed" if PyHessian else "NOT installed (pip install --no-deps pyhessian)"))  # fmt: skip
    rows = []
    for name in (args.models or ("mlp" if args.quick else "mlp,convfc")).split(","):
        case = {"mlp": mlp_case, "convfc": convfc_case}[name](args.quick)
        rows.append(bench(case, args))
    if not args.no_wedges:
        wedge_sweep(args.quick)
    if args.out:
        write_json(args.out, {"rows": rows, "quick": args.quick, "threads": torch.get_num_threads(),
                              "pyhessian": PyHessian is not None})  # fmt: skip
    if any(r["eigen"][0] is None for r in rows):
        raise SystemExit("isthmus did not reach 1% of the reference at any tolerance")


if __name__ == "__main__":
    main()
