"""Weight matching against the `rebasin` package (not a test): residual nets and transformers.

For each pair of nets (trained here on mnist1d, or two run folders given with `--runs`), both tools
weight-match B to A (Ainsworth et al. 2023, Algorithm 1): isthmus with `align.weight_matching` over
the model's unit description (`models.Units`: every residual stream one group, block channels,
attention heads with the query/key and value/output dimensions nested in them), and rebasin's
`PermutationCoordinateDescent`, which finds the permutations by tracing the module's graph. Then,
for each tool's permuted B:

  * which units it permuted. The permutation is read off the weights alone: for every unit group of
    isthmus's description and every tensor slice of it, the unit of B whose entries are the same
    multiset (so any reordering of the other axes) as slot k of the permuted B; a group is
    *permuted* when all its slices agree on one non-identity permutation (nested groups moving whole
    heads as their parent does), *in place* when they agree on the identity, and *broken* when they
    disagree (the function changed). The fraction is the share of all units (channels, hidden
    units, heads, head dimensions) that lie in permuted groups; BatchNorm running statistics are
    left out (rebasin does not permute them; its documentation asks users to recompute them, and
    isthmus recomputes them at every point anyway, docs/definitions.md), and reported apart.
    Beside it, the share of units in groups the tool's search acts on at all ("searched": for
    rebasin, groups with a tensor axis among those its permutations act on; the others it holds
    at the identity), which tells a group held fixed from one whose best permutation is the
    identity;
  * whether it computes B's function: max |f_B'(x) - f_B(x)| / max |f_B(x)| on the test inputs
    (BatchNorm nets: statistics recomputed on the same training subset for both);
  * the weight-matching objective it reached, sum over the unit tensors of <A, B'>;
  * the straight-line barrier from A to its B' (train and test loss; `paths.evaluate_path`).
Where rebasin searches every group, breaks none and keeps the function, the two are also raced:
the wall time of the matching (isthmus: `weight_matching` + `permute`; rebasin:
`PermutationCoordinateDescent(...)`, which traces the graph, + `.rebasin()`; building and loading
the modules is not timed), alternating runs in this process, median of `--repeats`, with the ratio
rebasin / isthmus, and the peak memory of each call (CUDA: peak allocated; CPU: peak resident-set
increase, as bench_curvature.py). `--race-always` races every pair (the ratio then compares
unequal work, and the script says so).

The nets (mnist1d, seeds S and S+1, `--epochs` 20): `resnet-bn` and `resnet-ln`, the residual net
with `--resnet-depth` 1 block per stage, width 1, BatchNorm or LayerNorm, trained with the default
`TrainConfig` (SGD); `transformer`, 2 blocks of width 32 with 4 heads, Adam at lr 1e-3 (the
README's residual-net and transformer section).

rebasin is not a dependency of isthmus. Install it into the environment that runs this script:

    pip install rebasin==0.0.47

(it adds torchview and graphviz and keeps the installed torch). Without it the script stops with
that line; `--skip-rebasin` runs the isthmus side and the unit counting alone (tests/ do that).
`--quick` shrinks everything to check that the script runs (seconds). The measurement:

    OMP_NUM_THREADS=2 python benchmarks/bench_rebasin.py --out bench_rebasin.json
    OMP_NUM_THREADS=2 python benchmarks/bench_rebasin.py --race-always   # time every pair
    python benchmarks/bench_rebasin.py --runs runs/resnet/0 runs/resnet/1   # your own pair
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from bench_curvature import measured
from torch import Tensor, nn
from torch.func import functional_call

from isthmus.align import permute, weight_matching
from isthmus.data import Dataset, load
from isthmus.io import load_runs, write_json
from isthmus.models import Layer, ModelConfig, TensorSlice, Units, build_model, units_of
from isthmus.params import Params, bn_subset, has_bn, params_of, recompute_bn
from isthmus.paths import evaluate_path, line
from isthmus.train import TrainConfig, train

try:  # optional: the tool compared against
    import rebasin
except ImportError:
    rebasin = None

INSTALL = "pip install rebasin==0.0.47"
RUNNING = ("running_mean", "running_var")
SAME_FUNCTION = 1e-4  # relative output change below which B' computes B's function


# ----------------------------------------------------------------------------- the nets


@dataclass(frozen=True)
class Pair:
    name: str
    model: nn.Module
    a: Params
    b: Params
    data: Dataset
    note: str


def configs(args) -> dict[str, tuple[ModelConfig, TrainConfig]]:
    """The architectures and their training (README: residual nets and transformers)."""
    e = args.epochs
    res = dict(kind="resnet", depth=args.resnet_depth, width=1, input_shape=(40,))
    tf = ModelConfig(kind="transformer", depth=args.tf_depth, width=args.tf_width,
                     heads=args.tf_heads, patch=4, input_shape=(40,))  # fmt: skip
    return {
        "resnet-bn": (ModelConfig(**res, batchnorm=True), TrainConfig(epochs=e)),
        "resnet-ln": (ModelConfig(**res, layernorm=True), TrainConfig(epochs=e)),
        "transformer": (tf, TrainConfig(optimizer="adam", lr=1e-3, epochs=e)),
    }


def trained_pair(name: str, cfg: ModelConfig, tcfg: TrainConfig, data: Dataset, seed: int) -> Pair:
    a, b = (train(cfg, data, tcfg, s, progress=False) for s in (seed, seed + 1))
    accs = "/".join(f"{r.metrics['test_acc']:.3f}" for r in (a, b))
    note = f"seeds {seed}, {seed + 1}; {tcfg.epochs} epochs; test acc {accs}"
    return Pair(name, build_model(cfg).to(data.x_train.device), a.params, b.params, data, note)


def run_pair(dirs: list[str], dev: torch.device) -> Pair:
    ra, rb = load_runs(dirs, device=dev)
    d = ra.config["data"]
    data = load(d["name"], d.get("root"), d.get("seed", 0), device=dev)
    mc = ra.model_config
    name = mc.kind + ("-bn" if mc.batchnorm else "-ln" if mc.layernorm else "")
    return Pair(name, ra.model.to(dev), ra.params, rb.params, data, f"{dirs[0]} {dirs[1]}")


# ----------------------------------------------------------------------------- counting units


@dataclass(frozen=True)
class Group:
    """What a tool did to one unit group: status "permuted", "in place" or "broken"."""

    name: str
    kind: str
    size: int
    status: str
    moved: int  # units not in their own slot (permuted groups)
    optimised: bool  # the tool searches a permutation of this group (else it keeps it fixed)
    stats_follow: bool | None  # BatchNorm running statistics moved with the weights (None: none)


def kind_of(layer: Layer) -> str:
    n = layer.name
    if n.startswith("stream"):
        return "residual stream"
    if n.endswith(".heads"):
        return "attention heads"
    if n.endswith((".qk", ".vo")):
        return "head dimensions"
    return "MLP hidden units" if n.endswith(".mlp") else "block channels"


def _rows(t: Tensor, s: TensorSlice, n: int) -> Tensor:
    """(n, -1): row k holds every entry of unit k, sorted (blind to the other axes' order)."""
    return t.detach().movedim(s.axis, 0).reshape(n, -1).sort(dim=1).values.cpu()


def candidates(before: Tensor, after: Tensor, s: TensorSlice, n: int) -> list[set[int]]:
    """For each unit slot k of `after`, the units of `before` with the same entries in slice s."""
    index: dict[bytes, set[int]] = {}
    for m, r in enumerate(_rows(before, s, n).numpy()):
        index.setdefault(r.tobytes(), set()).add(m)
    return [index.get(r.tobytes(), set()) for r in _rows(after, s, n).numpy()]


def recover(before: Params, after: Params, units: Units) -> tuple[dict[str, Tensor | None], dict]:
    """Per group, the permutation p (slot k of `after` holds unit p[k] of `before`) on which all of
    its weight slices agree, or None where they disagree; and per group whether its BatchNorm
    running statistics follow p (None: the group has none)."""
    perms: dict[str, Tensor | None] = {}
    follow: dict[str, bool | None] = {}
    size = {la.name: la.size for la in units.layers}
    for layer in units.layers:
        n = layer.size
        cand = [set(range(n)) for _ in range(n)]
        slices = (*layer.incoming, *layer.outgoing)
        for s in (s for s in slices if not s.name.endswith(RUNNING)):
            for k, c in enumerate(candidates(before[s.name], after[s.name], s, n)):
                cand[k] &= c
        p = None
        if all(cand):
            picks = [k if k in c else min(c) for k, c in enumerate(cand)]  # ties: stay put
            p = torch.tensor(picks) if len(set(picks)) == n else None
        if p is not None and layer.parent is not None:  # whole heads move as their parent's
            top, m = perms[layer.parent], n // size[layer.parent]
            if top is None or not torch.equal(p.reshape(-1, m) // m, top[:, None].expand(-1, m)):
                p = None
        perms[layer.name] = p
        stats = [s for s in slices if s.name.endswith(RUNNING)]
        follow[layer.name] = (
            None
            if not stats or p is None
            else all(torch.equal(after[s.name].cpu(), before[s.name].cpu()[p]) for s in stats)
        )
    return perms, follow


def count_units(
    before: Params, after: Params, units: Units, optimised: set[str] | None = None
) -> list[Group]:
    """What was done to every unit group of `units` between `before` and `after` (see module doc);
    `optimised`: the groups the tool searches a permutation for (None: all)."""
    perms, follow = recover(before, after, units)
    out = []
    for layer in units.layers:
        p = perms[layer.name]
        moved = 0 if p is None else int((p != torch.arange(layer.size)).sum())
        status = "broken" if p is None else "permuted" if moved else "in place"
        opt = optimised is None or layer.name in optimised
        out.append(Group(layer.name, kind_of(layer), layer.size, status, moved, opt,
                         follow[layer.name]))  # fmt: skip
    return out


def summary(groups: list[Group]) -> dict:
    total = sum(g.size for g in groups)
    permuted = sum(g.size for g in groups if g.status == "permuted")
    by_kind: dict[str, list[int]] = {}
    for g in groups:
        k = by_kind.setdefault(g.kind, [0, 0])
        k[0] += g.size if g.status == "permuted" else 0
        k[1] += g.size
    stats = [g.stats_follow for g in groups if g.stats_follow is not None]
    return {
        "units": total,
        "units_in_permuted_groups": permuted,
        "fraction": permuted / total,
        "units_moved": sum(g.moved for g in groups),
        "by_kind": {k: {"permuted": v[0], "units": v[1]} for k, v in by_kind.items()},
        "fraction_optimised": sum(g.size for g in groups if g.optimised) / total,
        "not_optimised": [g.name for g in groups if not g.optimised],
        "in_place": [g.name for g in groups if g.status == "in place"],
        "broken": [g.name for g in groups if g.status == "broken"],
        "bn_statistics_follow": None if not stats else all(stats),
        "groups": [asdict(g) for g in groups],
    }


# ----------------------------------------------------------------------------- the two tools


def isthmus_match(units: Units, a: Params, b: Params, seed: int) -> Params:
    """isthmus: Algorithm 1 over the unit description, then B permuted into A's order."""
    return permute(b, units, weight_matching(a, b, units, seed=seed, progress=False))


def rebasin_modules(model: nn.Module, a: Params, b: Params) -> tuple[nn.Module, nn.Module]:
    """Two modules holding A and B (rebasin permutes the second one in place); not timed."""
    mods = []
    for p in (a, b):
        m = copy.deepcopy(model)
        m.load_state_dict(p)
        mods.append(m.eval())
    return mods[0], mods[1]


def rebasin_match(ma: nn.Module, mb: nn.Module, x: Tensor, seed: int):
    """rebasin as its README uses it: trace with a batch of inputs, coordinate descent, apply.
    Returns B permuted and rebasin's `PermutationCoordinateDescent` object."""
    dev = x.device
    with torch.random.fork_rng(devices=[]):  # its sweeps visit permutations in torch's RNG order
        torch.manual_seed(seed)
        pcd = rebasin.PermutationCoordinateDescent(ma, mb, x, device_a=dev, device_b=dev)
        pcd.rebasin()
    return params_of(mb), pcd


def rebasin_searched(pcd, mb: nn.Module, units: Units) -> set[str]:
    """The unit groups for which rebasin searches a permutation: those with a slice (tensor, axis)
    among the parameters its permutations act on (the others it holds at the identity)."""
    names = {id(p): n for n, p in mb.named_parameters()}
    acted = {
        (names.get(id(info.parameter_b)), info.axis)
        for _, infos in pcd.pinit.model_graph.permutation_to_info
        for info in infos
    }
    return {
        la.name
        for la in units.layers
        if any((s.name, s.axis) in acted for s in (*la.incoming, *la.outgoing))
    }


# ----------------------------------------------------------------------------- measuring


@torch.no_grad()
def output_change(model: nn.Module, before: Params, after: Params, data: Dataset) -> float:
    """max |f_after - f_before| / max |f_before| on the test inputs (BN: recomputed statistics)."""
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    model.eval()
    outs = []
    for p in (before, after):
        p = recompute_bn(model, p, bn_x) if bn_x is not None else p
        outs.append(functional_call(model, p, (data.x_test,)).double())
    return float((outs[1] - outs[0]).abs().max() / outs[0].abs().max())


def objective(a: Params, b: Params, units: Units) -> float:
    """sum over the unit tensors (running statistics aside) of <A, B>: what matching maximises."""
    names = {s.name for la in units.layers for s in (*la.incoming, *la.outgoing)}
    names = sorted(n for n in names if not n.endswith(RUNNING))
    return float(sum((a[n].double() * b[n].double()).sum() for n in names))


def line_barrier(pair: Pair, b: Params, points: int) -> dict:
    bn_x = bn_subset(pair.data.x_train) if has_bn(pair.model) else None
    r = evaluate_path(pair.model, line(pair.a, b), pair.data, points=points, bn_x=bn_x)
    return {"train_loss": r.barrier["train_loss"], "test_loss": r.barrier["test_loss"],
            "end_train_loss": r.train_loss[-1]}  # fmt: skip


def timed(fn, dev: torch.device):
    """(seconds, peak MiB or None, fn()): CUDA peak allocated, or the CPU peak RSS increase."""
    if dev.type != "cuda":
        return measured(fn)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2**20, out


def race(pair: Pair, units: Units, x: Tensor, args) -> dict:
    """Alternating runs of both matchings, median seconds and peak memory of each."""
    runs: dict[str, list[tuple[float, float | None]]] = {"isthmus": [], "rebasin": []}
    for r in range(args.repeats):
        for tool in ("isthmus", "rebasin") if r % 2 == 0 else ("rebasin", "isthmus"):
            if tool == "isthmus":
                s, mib, _ = timed(lambda: isthmus_match(units, pair.a, pair.b, args.seed), x.device)
            else:
                ma, mb = rebasin_modules(pair.model, pair.a, pair.b)
                s, mib, _ = timed(lambda: rebasin_match(ma, mb, x, args.seed), x.device)  # noqa: B023
            runs[tool].append((s, mib))
    out = {}
    for tool, rs in runs.items():
        mibs = [m for _, m in rs if m is not None]
        out[tool] = {"seconds": statistics.median(s for s, _ in rs),
                     "peak_mib": max(mibs) if mibs else None, "runs": [s for s, _ in rs]}  # fmt: skip
    out["ratio_rebasin_over_isthmus"] = out["rebasin"]["seconds"] / out["isthmus"]["seconds"]
    return out


# ----------------------------------------------------------------------------- one pair


def bench(pair: Pair, args) -> dict:
    units = units_of(pair.model)
    x = pair.data.x_train[: args.trace_batch]
    row = {"model": pair.name, "nets": pair.note, "units": sum(la.size for la in units.layers)}
    row["before"] = {"objective": objective(pair.a, pair.b, units),
                     "barrier": line_barrier(pair, pair.b, args.points)}  # fmt: skip
    perm = weight_matching(pair.a, pair.b, units, seed=args.seed, progress=False)
    results = {"isthmus": (permute(pair.b, units, perm), None)}
    if rebasin is not None:
        ma, mb = rebasin_modules(pair.model, pair.a, pair.b)
        b2, pcd = rebasin_match(ma, mb, x, args.seed)
        results["rebasin"] = (b2, rebasin_searched(pcd, mb, units))
        if any(not torch.equal(v, pair.a[k]) for k, v in params_of(ma).items()):
            raise SystemExit(f"{pair.name}: rebasin changed net A")
    for tool, (b2, searched) in results.items():
        groups = count_units(pair.b, b2, units, searched)
        if tool == "isthmus":  # the counting must read off the permutation isthmus applied
            for g in groups:
                found = g.moved if g.status != "broken" else -1
                if found != int((perm[g.name] != torch.arange(g.size)).sum()):
                    raise SystemExit(f"{pair.name}: counting misread isthmus's group {g.name}")
        change = output_change(pair.model, pair.b, b2, pair.data)
        r = {"counts": summary(groups), "output_change": change,
             "same_function": change < SAME_FUNCTION,
             "objective": objective(pair.a, b2, units)}  # fmt: skip
        if r["same_function"]:
            r["barrier"] = line_barrier(pair, b2, args.points)
        else:  # not B's function: the line ends elsewhere; say how far B' is from B instead
            r["end_train_loss"] = line_barrier(pair, b2, 2)["end_train_loss"]
        row[tool] = r
    reb = row.get("rebasin")
    full = reb and not (reb["counts"]["not_optimised"] or reb["counts"]["broken"])
    row["rebasin_permutes_all"] = bool(full and reb["same_function"])
    if reb and args.repeats > 0 and (row["rebasin_permutes_all"] or args.race_always):
        row["race"] = race(pair, units, x, args)
    return row


# ----------------------------------------------------------------------------- printing


def fmt_barrier(b: dict | None) -> str:
    return "-" if b is None else f"{b['train_loss']:.3f} ({b['test_loss']:.3f})"


def print_row(row: dict) -> None:
    print(f"\n== {row['model']} ({row['nets']}; {row['units']} units); barrier before alignment "
          f"{fmt_barrier(row['before']['barrier'])}, objective {row['before']['objective']:.4g}")  # fmt: skip
    print(f"  {'tool':8s} {'searched':>8s} {'units permuted':>16s} {'moved':>6s} {'|df|/|f|':>9s} "
          f"{'objective':>10s} {'barrier train (test)':>21s}")  # fmt: skip
    for tool in ("isthmus", "rebasin"):
        r = row.get(tool)
        if r is None:
            continue
        c = r["counts"]
        frac = f"{c['fraction']:.3f} ({c['units_in_permuted_groups']}/{c['units']})"
        bar = fmt_barrier(r.get("barrier")) if r["same_function"] else (
            f"B' train loss {r['end_train_loss']:.3f}"
        )  # fmt: skip
        print(f"  {tool:8s} {c['fraction_optimised']:8.3f} {frac:>16s} {c['units_moved']:6d} "
              f"{r['output_change']:9.1e} "
              f"{r['objective']:10.4g} {bar:>21s}")  # fmt: skip
        kinds = ", ".join(f"{k} {v['permuted']}/{v['units']}" for k, v in c["by_kind"].items())
        print(f"  {'':8s} by kind: {kinds}")
        for what, label in (("not_optimised", "held fixed by the tool"),
                            ("in_place", "identity found best"), ("broken", "broken")):  # fmt: skip
            named = [n for n in c[what] if what != "in_place" or n not in c["not_optimised"]]
            if named:
                print(f"  {'':8s} {label}: {', '.join(named)}")
        if c["bn_statistics_follow"] is False:
            print(f"  {'':8s} BatchNorm running statistics left in B's order (recomputed here)")
    if "race" in row:
        rc = row["race"]
        if not row["rebasin_permutes_all"]:
            print("  (--race-always: rebasin does less than isthmus here, the ratio is not like "
                  "for like)")  # fmt: skip
        mib = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"  race, median of {len(rc['isthmus']['runs'])} alternating runs: isthmus "
              f"{rc['isthmus']['seconds']:.3f} s (peak {mib(rc['isthmus']['peak_mib'])} MiB), "
              f"rebasin {rc['rebasin']['seconds']:.3f} s (peak {mib(rc['rebasin']['peak_mib'])} "
              f"MiB); ratio rebasin / isthmus {rc['ratio_rebasin_over_isthmus']:.2f}x")  # fmt: skip
    elif "rebasin" in row:
        print("  no race: rebasin does not search every unit group of this net, or changes its "
              "function")  # fmt: skip


def main() -> None:
    global rebasin
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="resnet-bn,resnet-ln,transformer",
                    help="comma-separated: resnet-bn,resnet-ln,transformer")  # fmt: skip
    ap.add_argument("--runs", nargs=2, action="append", metavar=("A", "B"),
                    help="a pair of run folders instead of training (repeatable)")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=20, help="training epochs per net [20]")
    ap.add_argument("--resnet-depth", type=int, default=1, help="blocks per stage [1]")
    ap.add_argument("--tf-depth", type=int, default=2, help="transformer blocks [2]")
    ap.add_argument("--tf-width", type=int, default=32, help="transformer width [32]")
    ap.add_argument("--tf-heads", type=int, default=4, help="transformer heads [4]")
    ap.add_argument("--points", type=int, default=21, help="points on each line [21]")
    ap.add_argument("--repeats", type=int, default=5, help="alternating timed runs [5]")
    ap.add_argument("--race-always", action="store_true",
                    help="time also where rebasin leaves groups fixed or changes the function")  # fmt: skip
    ap.add_argument("--trace-batch", type=int, default=8, help="inputs rebasin traces with [8]")
    ap.add_argument("--seed", type=int, default=0, help="nets: seeds S, S+1; matching order: S")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    ap.add_argument("--skip-rebasin", action="store_true", help="isthmus side only, as if absent")
    ap.add_argument("--out", default=None, help="also write every number as JSON here")
    args = ap.parse_args()
    if args.skip_rebasin:
        rebasin = None
    elif rebasin is None:
        raise SystemExit(f"rebasin is not installed (not a dependency of isthmus): {INSTALL}\n"
                         "or run with --skip-rebasin for the isthmus side alone")  # fmt: skip
    dev = torch.device(args.device)
    if args.quick:
        args.epochs, args.tf_depth, args.tf_width, args.tf_heads = 1, 1, 16, 2
        args.points, args.repeats = 5, min(args.repeats, 1)
    version = importlib.metadata.version("rebasin") if rebasin else None
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads; rebasin "
          + (version or f"not used ({INSTALL})"))  # fmt: skip
    if args.runs:
        pairs = [run_pair(list(d), dev) for d in args.runs]
    else:
        data = load("mnist1d", device=dev)
        data = data.subset(256, 128, seed=args.seed) if args.quick else data
        cfgs = configs(args)
        pairs = []
        for name in args.models.split(","):
            cfg, tcfg = cfgs[name]
            pairs.append(trained_pair(name, cfg, tcfg, data, args.seed))
    rows = []
    for pair in pairs:
        rows.append(bench(pair, args))
        print_row(rows[-1])
    if args.out:
        write_json(args.out, {"rows": rows, "quick": args.quick, "rebasin": version,
                              "device": str(dev), "threads": torch.get_num_threads()})  # fmt: skip
    bad = [r["model"] for r in rows if not r["isthmus"]["same_function"]]
    if bad or any(r["isthmus"]["counts"]["broken"] for r in rows):
        raise SystemExit(f"isthmus's permuted B does not compute B's function: {bad}")


if __name__ == "__main__":
    main()
