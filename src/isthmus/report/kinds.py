"""The sections of a report, one per kind of result: each reads its JSON file and adds a table of
the main numbers, and hands its settings and the runs it was computed from to the page."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import IsthmusError
from ..io import read_json
from .folder import Page, drawn, is_run, members
from .page import Link, Mark, describe


def _barrier_row(name: str, b: Mapping) -> list:
    return [
        name,
        b.get("train_loss"),
        b.get("train_loss_vs_mean"),
        b.get("test_loss"),
        b.get("t_max"),
    ]


BARRIER = ["path", "train-loss barrier", "vs endpoint mean", "test-loss barrier", "t of max"]
METRICS = ["train loss", "train acc", "test loss", "test acc"]


def _metrics(m: Mapping) -> list:
    return [m.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc")]


HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


def _history(metrics: Mapping, path: Path) -> list[dict] | None:
    """metrics.json's per-epoch "history" (None when absent or empty), checked before it is
    drawn: a list of objects with an integer epoch and a number for each loss and accuracy."""
    h = metrics.get("history") if isinstance(metrics, Mapping) else None
    if not h:
        return None

    def real(v) -> bool:
        return type(v) in (int, float)

    ok = isinstance(h, list) and all(
        isinstance(r, dict)
        and all(k in r for k in HISTORY_FIELDS)
        and type(r["epoch"]) is int
        and 0 <= r["epoch"] < 10**9
        and all(real(r[k]) for k in HISTORY_FIELDS[1:])
        for r in h
    )
    if not ok:
        raise IsthmusError(
            f"{path}: field 'history' must be a list of objects with an integer 'epoch' and "
            f"numbers {', '.join(repr(k) for k in HISTORY_FIELDS[1:])}; re-create the run with "
            "`isthmus train`"
        )
    return h


def run_section(pg: Page) -> None:
    config = read_json(pg.folder / "config.json")
    mf = pg.folder / "metrics.json"
    metrics = read_json(mf) if mf.is_file() else {}
    pg.rep.heading("Trained run")
    pg.rep.table(["net", *METRICS], [[pg.folder.name, *_metrics(metrics)]], "after the last epoch")
    ev = pg.folder / "eval.json"
    if ev.is_file():
        e = read_json(ev)
        pg.rep.table(
            ["data", *METRICS], [[e.get("data"), *_metrics(e)]], "isthmus eval (eval.json)"
        )
    snaps = sorted((pg.folder / "snapshots").glob("epoch_*.safetensors"))
    if snaps:
        pg.rep.text(
            f"{len(snaps)} snapshots in snapshots/ (epochs {snaps[0].stem[6:]}..{snaps[-1].stem[6:]})."
        )
    history = _history(metrics, mf)
    if history:
        from .. import plot

        png = drawn(plot.learning_curves, [history], [pg.folder.name])
        pg.rep.figure(png, "Learning curves (solid: train split, dashed: test split).")
    pg.settings.append(("run config.json", config))
    if isinstance(config.get("aligned_to"), str):
        pg.related.append(config["aligned_to"])


def population_section(pg: Page) -> None:
    folders = members(pg.folder)
    configs = [read_json(m / "config.json") for m in folders]
    metrics = [
        read_json(m / "metrics.json") if (m / "metrics.json").is_file() else {} for m in folders
    ]
    pg.rep.heading(f"Population of {len(folders)} runs")
    rows = [
        [Link(m.name, pg.href(m)), c.get("seed"), *_metrics(mt)]
        for m, c, mt in zip(folders, configs, metrics, strict=True)
    ]
    pg.rep.table(["member", "seed", *METRICS], rows, "after the last epoch")
    hist = [
        (m.name, h)
        for m, mt in zip(folders, metrics, strict=True)
        if (h := _history(mt, m / "metrics.json"))
    ]
    if hist:
        from .. import plot

        png = drawn(plot.learning_curves, [h for _, h in hist], [f"member {n}" for n, _ in hist])
        pg.rep.figure(png, "Learning curves of the members (solid: train, dashed: test).")
    pg.settings.append(
        (f"config.json of member {folders[0].name} (seeds in the table)", configs[0])
    )


_PATH_RESULTS = {"t", "train_loss", "train_acc", "test_loss", "test_acc", "barrier", "segments",
                 "certificate", "linear", "fit_history", "neb_history", "orthogonal_history",
                 "layout", "versions", "kept_a", "kept_b", "search_a", "search_b", "search",
                 "noise_stability_a", "noise_stability_b"}  # fmt: skip


def _connect(pg: Page, doc: dict) -> None:
    pg.rep.heading(f"Path between two nets ({doc.get('method')})")
    rows = [_barrier_row(f"{doc.get('method')} path", doc.get("barrier") or {})]
    if isinstance(doc.get("linear"), Mapping):
        rows.append(
            _barrier_row("straight line between the same nets", doc["linear"].get("barrier", {}))
        )
    pg.rep.table(BARRIER, rows, "barriers (nats of cross-entropy)")
    loss = [v for v in doc.get("train_loss") or [] if v is not None]
    if loss:
        pg.rep.table(
            ["quantity", "value"],
            [["max train loss on the path", max(loss)], ["points evaluated", len(loss)],
             ["train loss at A, at B", f"{describe(loss[0])}, {describe(loss[-1])}"]],
        )  # fmt: skip
    cert = doc.get("certificate")
    if isinstance(cert, Mapping):
        holds = Mark("holds", "good") if cert.get("holds") else Mark("fails", "bad")
        pg.rep.table(
            ["certificate", "value"],
            [["certified bound", cert.get("bound")], ["max train loss on the path", cert.get("max_loss_on_path")], ["verdict", holds]],
        )  # fmt: skip
    segs = doc.get("segments") or []
    if segs:
        kinds = sorted({s.get("kind") for s in segs})
        count = [
            [
                k,
                sum(s.get("kind") == k for s in segs),
                max(s.get("max_loss") or 0 for s in segs if s.get("kind") == k),
            ]
            for k in kinds
        ]
        pg.rep.table(["segment kind", "segments", "max train loss"], count, "segments")
    pg.settings.append(("path.json", {k: v for k, v in doc.items() if k not in _PATH_RESULTS}))
    pg.related += [r for r in doc.get("runs") or [] if isinstance(r, str)]


def _tree(pg: Page, doc: dict) -> None:
    s = doc.get("settings") or {}
    runs = s.get("runs") or []

    def name(i) -> str:  # a run by its index in the tree's list
        return runs[i] if isinstance(i, int) and 0 <= i < len(runs) else str(i)

    pg.rep.heading(f"Minimum spanning tree over {len(runs)} runs")
    pairs = []
    for key, p in (doc.get("pairs") or {}).items():
        i, _, j = key.partition("-")
        pair = f"{name(int(i))} - {name(int(j))}" if i.isdigit() and j.isdigit() else key
        pairs.append([pair, p.get("max_loss"), p.get("barrier"), p.get("test_barrier")])
    pg.rep.table(["pair", "max train loss", "train barrier", "test barrier"], pairs, "every pair")
    tree = doc.get("tree") or {}
    if tree.get("edges"):
        edges = [[f"{name(e['i'])} - {name(e['j'])}", e.get("weight")] for e in tree["edges"]]
        pg.rep.table(
            ["tree edge", f"weight ({s.get('weight')})"],
            edges,
            f"the tree (worst edge {describe(tree.get('worst'))})",
        )
    elif not doc.get("done"):
        pg.rep.text("Not finished: some pairs are missing (resume with isthmus tree --resume).")
    pg.settings.append(("tree.json settings", s))
    pg.related += [r for r in runs if isinstance(r, str)]


def _surface(pg: Page, doc: dict) -> None:
    grid = doc.get("train_loss") or []
    flat = [v for row in grid for v in (row if isinstance(row, list) else [row]) if v is not None]
    pg.rep.heading(f"Loss surface ({doc.get('kind')})")
    rows = [["grid points", len(flat)]]
    if flat:
        rows += [
            ["lowest train loss on the grid", min(flat)],
            ["highest train loss on the grid", max(flat)],
        ]
    pg.rep.table(["quantity", "value"], rows)
    pts = doc.get("points") or {}
    if pts:
        pg.rep.table(
            ["anchor", "x", "y"], [[k, *v] for k, v in pts.items()], "anchor points in the plane"
        )
    keep = ("kind", "grid", "names", "runs", "seed")
    pg.settings.append(("surface.json", {k: doc[k] for k in keep if k in doc}))
    pg.related += [r for r in doc.get("runs") or [] if isinstance(r, str)]


def _align(pg: Page, doc: dict) -> None:
    pg.rep.heading(f"Permutation alignment ({doc.get('method')})")
    rows = [
        _barrier_row("before alignment", doc.get("barrier_before") or {}),
        _barrier_row("after alignment", doc.get("barrier_after") or {}),
    ]
    pg.rep.table(BARRIER, rows, "straight line from A to B (nats of cross-entropy)")
    moved = doc.get("moved") or {}
    if moved:
        pg.rep.table(["layer", "fraction of units moved"], list(moved.items()))
    keep = (
        "method",
        "seed",
        "run_a",
        "run_b",
        "data",
        "n_examples",
        "objective_before",
        "objective_after",
    )
    pg.settings.append(("align.json", {k: doc[k] for k in keep if k in doc}))
    pg.related += [doc[k] for k in ("run_a", "run_b") if isinstance(doc.get(k), str)]


def _stability(pg: Page, doc: dict) -> None:
    pg.rep.heading(f"{str(doc.get('kind')).capitalize()} stability")
    eps = doc.get("epsilon")
    eps = eps if isinstance(eps, float) else describe(eps, doc.get("epsilon_nonfinite"))
    pg.rep.table(
        ["quantity", "value"],
        [
            ["epsilon", eps],
            ["train loss L(theta)", doc.get("loss")],
            ["train accuracy", doc.get("acc")],
        ],
    )
    by = doc.get("by_start_layer") or []
    accs = doc.get("acc_by_start_layer") or [None] * len(by)
    if by:
        rows = [
            [
                c.get("i"),
                c.get("loss"),
                a,
                ", ".join(f"{k}: {len(v)}" for k, v in (c.get("kept") or {}).items()),
            ]
            for c, a in zip(by, accs, strict=False)
        ]
        pg.rep.table(
            ["start layer i", "L(theta_i)", "accuracy", "units kept per layer"],
            rows,
            "best dropout version per start layer",
        )
    layers = doc.get("layers") or []
    per_layer = (
        "dims",
        "layer_cushion",
        "layer_cushion_mean",
        "interlayer_cushion_from",
        "activation_contraction_by_layer",
    )
    cols = [k for k in per_layer if isinstance(doc.get(k), list)]
    if layers and cols:
        rows = [
            [name, *[(doc[k][j] if j < len(doc[k]) else "") for k in cols]]
            for j, name in enumerate(layers)
        ]
        pg.rep.table(["layer", *cols], rows, "per layer")
    inputs = doc.get("inputs") or {}
    pg.settings.append(
        ("stability.json search", {"search": doc.get("search") or {}, "data": inputs.get("data")})
    )
    pg.related += [
        r.get("path")
        for r in inputs.get("runs") or []
        if isinstance(r, Mapping) and isinstance(r.get("path"), str)
    ]


def _hessian(pg: Page, doc: dict) -> None:
    pg.rep.heading("Hessian of the train loss")
    ev, res = doc.get("eigenvalues") or [], doc.get("residuals") or []
    if ev:
        rows = [[k + 1, v, res[k] if k < len(res) else None] for k, v in enumerate(ev)]
        pg.rep.table(
            ["k", "eigenvalue", "residual"],
            rows,
            f"top eigenvalues (Lanczos, {doc.get('lanczos_steps')} steps, converged: {describe(doc.get('converged'))})",
        )
    tr = doc.get("trace")
    if isinstance(tr, Mapping):
        pg.rep.table(
            ["trace estimate", "standard error", "probes"],
            [[tr.get("estimate"), tr.get("stderr"), tr.get("probes")]],
            "trace (Hutchinson)",
        )
    per = doc.get("per_layer") or {}
    if per:
        rows = [
            [
                k,
                v.get("parameters"),
                v.get("top_eigenvalue"),
                (v.get("trace") or {}).get("estimate"),
            ]
            for k, v in per.items()
        ]
        pg.rep.table(["layer", "parameters", "top eigenvalue", "trace"], rows, "per-layer blocks")
    pg.settings.append(
        (
            "hessian.json",
            {
                k: v
                for k, v in doc.items()
                if isinstance(v, str | int | float) and k != "lanczos_steps"
            },
        )
    )
    if isinstance(doc.get("run"), str):
        pg.related.append(doc["run"])


def _subspace(pg: Page, doc: dict) -> None:
    pg.rep.heading(
        f"Subspace ({doc.get('method')}): {doc.get('vertices')} vertices, dimension {doc.get('dimension')}"
    )
    s, t = doc.get("sample_loss") or {}, doc.get("sample_test_loss") or {}
    rows = [
        ["solutions (max)", max(doc.get("solution_loss") or [0]), None],
        [
            "connectors (max)",
            max(doc.get("connector_loss") or [0]) if doc.get("connector_loss") else None,
            None,
        ],
        ["uniform samples (mean)", s.get("mean"), t.get("mean")],
        ["uniform samples (max)", s.get("max"), t.get("max")],
        ["straight lines between solutions (max)", doc.get("line_max_loss"), None],
    ]
    pg.rep.table(["where", "train loss", "test loss"], rows, "losses on the complex (nats)")
    vm = doc.get("vertex_metrics") or {}
    if vm.get("train_loss"):
        fixed = set(doc.get("fixed") or [])
        rows = [
            [
                v,
                "solution" if v in fixed else "trained",
                *[
                    vm.get(k, [None] * (v + 1))[v]
                    for k in ("train_loss", "train_acc", "test_loss", "test_acc")
                ],
            ]
            for v in range(len(vm["train_loss"]))
        ]
        pg.rep.table(["vertex", "role", *METRICS], rows, "vertices")
    keep = ("method", "model", "data", "runs", "vertices", "dimension", "penalty", "fit")
    pg.settings.append(("subspace.json", {k: doc[k] for k in keep if k in doc}))
    pg.related += [r for r in doc.get("runs") or [] if isinstance(r, str)]


def _ensemble(pg: Page, doc: dict) -> None:
    pg.rep.heading(f"Ensembles on the {doc.get('split')} split of {doc.get('data')}")
    rows = []
    for name, s in (doc.get("sources") or {}).items():
        ma = (s.get("member_accuracy") or {}).get("mean")
        rows.append(
            [
                name,
                s.get("members"),
                s.get("accuracy"),
                ma,
                s.get("nll"),
                s.get("ece"),
                s.get("disagreement"),
                s.get("js"),
            ]
        )
        for v in (s.get("members_from") or {}).values():
            pg.related += (
                [v]
                if isinstance(v, str)
                else [x for x in v if isinstance(x, str)]
                if isinstance(v, list)
                else []
            )
    pg.rep.table(
        [
            "source",
            "members",
            "ensemble accuracy",
            "mean member accuracy",
            "NLL",
            "ECE",
            "disagreement",
            "mean JS",
        ],
        rows,
    )
    pg.settings.append(
        ("ensemble.json", {k: doc[k] for k in ("seed", "data", "split") if k in doc})
    )


def _mean_std(d) -> str:
    if isinstance(d, Mapping):
        return f"{describe(d.get('mean'), digits=4)} ± {describe(d.get('std'), digits=3)}"
    return describe(d)


def _study(pg: Page, doc: dict) -> None:
    hyper = doc.get("hyperparameter")
    pg.rep.heading(f"Curvature against {hyper}")
    qs = ("radius", "top_eigenvalue", "trace", "random_rise", "radial_rise")
    rows = [[r.get("value"), *[_mean_std(r.get(q)) for q in qs]] for r in doc.get("summary") or []]
    pg.rep.table([str(hyper), *qs], rows, "mean ± std over seeds")
    if doc.get("rows"):
        pg.rep.records(doc["rows"], "every net")
    pg.settings.append(
        (
            "study.json",
            {k: doc[k] for k in ("hyperparameter", "values", "seeds", "settings") if k in doc},
        )
    )


def _counterexample(pg: Page, doc: dict) -> None:
    pg.rep.heading(f"Counterexample (h = {doc.get('h')})")
    searches = sorted({k for part in ("counterexample", "ordinary") for k in (doc.get(part) or {})})
    rows = [
        [
            s,
            (doc.get("counterexample") or {}).get(s, {}).get("max_loss"),
            (doc.get("ordinary") or {}).get(s, {}).get("max_loss"),
        ]
        for s in searches
    ]
    pg.rep.table(
        ["search", "counterexample: max loss", "ordinary data: max loss"],
        rows,
        "highest mean squared error on the path found",
    )
    pg.settings.append(
        (
            "counterexample.json",
            {k: doc[k] for k in ("h", "samples", "seed", "endpoint_loss") if k in doc},
        )
    )


def _wedges(pg: Page, doc: dict) -> None:
    pg.rep.heading("Wedge model experiments")
    for name, res in (doc.get("experiments") or {}).items():
        scalars = (
            {k: v for k, v in res.items() if not isinstance(v, list | dict)}
            if isinstance(res, Mapping)
            else {}
        )
        pg.rep.settings(scalars, f"experiment {name}")
    pg.settings.append(("wedges.json", {"config": doc.get("config"), "seed": doc.get("seed")}))


def _demo(pg: Page, doc: dict) -> None:
    pg.rep.heading("Demo numbers (summary.json)")
    pg.rep.settings(
        {k: v for k, v in doc.items() if k not in ("settings", "seed")}, "every number of the demo"
    )
    pg.settings.append(("demo settings", {"seed": doc.get("seed"), **(doc.get("settings") or {})}))


def _sweep(pg: Page, doc: dict) -> None:
    """A sweep folder (`sweep.json`, `results.csv`, figures, one folder per job): its scalar
    settings, its lists of flat objects (the jobs) as tables; the CSV follows as a table."""
    pg.rep.heading("Sweep")
    pg.rep.settings({k: v for k, v in doc.items() if not isinstance(v, list | dict)}, "sweep.json")
    for k, v in doc.items():
        if is_records(v):
            pg.rep.records(v, f"sweep.json: {k}")
    nested = {k: v for k, v in doc.items() if isinstance(v, list | dict) and not is_records(v)}
    pg.settings.append(("sweep.json", nested))


def _instability(pg: Page, doc: dict) -> None:
    s = doc.get("settings") or {}
    pg.rep.heading(f"Instability of training ({s.get('copies')} copies per spawn step)")
    rows = []
    for sp in doc.get("spawns") or []:
        m, copies = sp.get("mean") or {}, sp.get("copies") or []
        acc = [c.get("test_acc") for c in copies if c.get("test_acc") is not None]
        rows.append([
            sp.get("step"), sp.get("epoch"), (sp.get("parent") or {}).get("test_acc"),
            sum(acc) / len(acc) if acc else None, m.get("train_error"), m.get("test_error"),
            m.get("train_loss"), m.get("test_loss"),
            Mark("stable", "good") if sp.get("stable") else Mark("unstable", "bad"),
        ])  # fmt: skip
    head = ["spawn step", "epoch", "parent test acc", "copies' test acc", "train error barrier",
            "test error barrier", "train loss barrier", "test loss barrier", "verdict"]  # fmt: skip
    pg.rep.table(head, rows, "barriers between the copies at the end (mean over pairs)")
    k, threshold = doc.get("stable_step"), describe(s.get("threshold"))
    if k is not None:
        verdict = f"Stable (test-error barrier below {threshold} here and later) from step {k}."
    elif not doc.get("done"):
        verdict = "Not finished: rerun the command with --resume for the remaining spawn steps."
    else:
        verdict = f"No spawn step measured is stable (threshold {threshold})."
    pg.rep.text(verdict)
    keep = ("seed", "spawn_at", "copies", "order_seeds", "threshold", "points", "total_steps")
    keep += ("steps_per_epoch", "model", "train", "data")
    pg.settings.append(("instability.json settings", {q: s[q] for q in keep if q in s}))


def is_records(v) -> bool:
    """A list of flat objects: one table row each."""
    return (
        isinstance(v, list)
        and bool(v)
        and all(
            isinstance(r, Mapping) and not any(isinstance(x, list | dict) for x in r.values())
            for r in v
        )
    )


# (file that marks the kind, kind, its section); a folder may hold several (an aligned run)
KINDS: tuple[tuple[str, str, Callable], ...] = (
    ("sweep.json", "sweep", _sweep),
    ("summary.json", "demo", _demo),
    ("path.json", "connection", _connect),
    ("tree.json", "spanning tree", _tree),
    ("surface.json", "loss surface", _surface),
    ("align.json", "alignment", _align),
    ("stability.json", "stability", _stability),
    ("hessian.json", "Hessian", _hessian),
    ("subspace.json", "subspace", _subspace),
    ("ensemble.json", "ensembles", _ensemble),
    ("study.json", "hyperparameter study", _study),
    ("wedges.json", "wedge model", _wedges),
    ("counterexample.json", "counterexample", _counterexample),
    ("instability.json", "instability", _instability),
)


def detect(folder: str | Path) -> list[str]:
    """The kinds of result in `folder`, from the files present (empty: nothing isthmus knows)."""
    folder = Path(folder)
    kinds = [kind for f, kind, _ in KINDS if (folder / f).is_file()]
    if is_run(folder):
        kinds.append("run")
    elif folder.is_dir() and members(folder):
        kinds.append("population")
    return kinds
