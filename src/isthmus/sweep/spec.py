"""The sweep spec: a TOML file of job groups (train / connect / stability / hessian), read with
`tomllib`, checked key by key, and expanded into jobs (docs/sweeps.md gives the schema).

A group's settings are the flags of the matching command (`isthmus train --lr` is `lr = ...`),
checked with the same ranges (`cli._types`) and, once merged, with `ModelConfig.validate` /
`TrainConfig.validate`. `grid` (a cartesian product) or `list` (an explicit list) vary them;
`seeds` repeats every point. Every error names the file, the group, the key and the fix.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..cli._types import bounded, channels, positive, real, seed
from ..data import DATASETS
from ..errors import IsthmusError
from ..models import MODEL_KINDS, ModelConfig, default_width
from ..paths.connect import METHODS
from ..study import population_key
from ..train import TrainConfig

KINDS = ("train", "connect", "stability", "hessian")
MAX_JOBS = 100_000  # an upper bound against typos in a grid


def _choice(*options: str):
    def parse(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(options)}, got {text!r}")
        return text

    return parse


# key -> (TOML type(s), parser of its text, default); the parsers are the commands' flag types
INT, NUM, STR, BOOL = (int,), (int, float), (str,), (bool,)
MODEL = {
    "model": (STR, _choice(*sorted(MODEL_KINDS)), "mlp"),
    "depth": (INT, bounded(1, 256), 3),
    "width": ((int, list), bounded(1, 65536), None),  # None: the model's `default_width`
    "channels": ((list, str), channels, "32,M,64,M,64,M"),
    "bias": (BOOL, None, True),
    "batchnorm": (BOOL, None, False),
    "layernorm": (BOOL, None, False),
    "heads": (INT, bounded(1, 65536), 4),
    "patch": (INT, bounded(1, 65536), 4),
}
TRAIN = {
    "optimizer": (STR, _choice("sgd", "adam"), "sgd"),
    "lr": (NUM, real(0, 1e3, open_lo=True), 0.05),
    "momentum": (NUM, real(0, 0.999), 0.9),
    "schedule": (STR, _choice("constant", "cosine", "step"), "cosine"),
    "l2": (NUM, real(0, 1e3), 0.0),
    "dropout": (NUM, real(0, 0.99), 0.0),
    "epochs": (INT, positive, 30),
    "batch_size": (INT, positive, 128),
}
SETTINGS = {
    "train": MODEL | TRAIN,
    "connect": {
        "method": (STR, _choice(*METHODS), "bezier"),
        "bends": (INT, bounded(1, 100), 1),
        "epochs": (INT, positive, None),
        "lr": (NUM, real(0, 1e3, open_lo=True), None),
        "optimizer": (STR, _choice("sgd", "adam"), None),
        "batch_size": (INT, positive, 128),
        "samples": (INT, bounded(1, 4096), 4),
        "l2": (NUM, real(0, 1e3), 0.0),
        "points": (INT, bounded(2, 10**5), 61),
        "pivots": (INT, bounded(0, 1000), 3),
        "cycles": (INT, positive, 4),
        "depth": (INT, bounded(1, 20), None),
        "tolerance": (NUM, real(0), None),
        "align": (STR, _choice("none", "weights", "activations"), "none"),
    },
    "stability": {
        "kind": (STR, _choice("dropout", "noise"), "dropout"),
        "strategy": (STR, _choice("auto", "random", "greedy", "swap"), "auto"),
        "draws": (INT, bounded(0, 10**6), 256),
        "swaps": (INT, bounded(0, 10**6), 256),
        "fit_r": (BOOL, None, False),
        "examples": (INT, positive, 256),
        "projections": (INT, bounded(0, 10**5), 128),
        "noise_scale": (NUM, real(0, 1e6, open_lo=True), 1.0),
        "batch_size": (INT, positive, None),
    },
    "hessian": {
        "top": (INT, bounded(1, 1000), 5),
        "trace": (BOOL, None, False),
        "probes": (INT, bounded(1, 10**5), 100),
        "examples": (INT, positive, None),
    },
}
GROUP = {  # keys of every group besides its settings
    "name": "a name for the group: letters, digits, _ . -",
    "seeds": "a list of seeds, e.g. [0, 1, 2]",
    "grid": "a table of setting = [values] (every combination is run)",
    "list": "a list of tables of settings (each one is run)",
    "num_cpus": "CPUs per job (a number > 0) [1]",
    "num_gpus": "GPUs per job (a number >= 0) [0]",
}
DEPENDENT = {"runs": "the name of a [[train]] group whose nets this group measures"}
PAIRS = {"pairs": "which nets of a train point to join: 'consecutive' seeds or 'all' pairs"}
DATA = {"name": (STR, "mnist1d"), "root": (STR, None), "seed": (INT, 0)}
DATA_PARSE = {"name": _choice(*DATASETS), "root": None, "seed": seed}


@dataclass(frozen=True)
class Group:
    """One checked group: its kind, name, settings per point (defaults filled in), the values
    that vary between points, seeds and resources."""

    kind: str
    name: str
    points: list[dict]
    values: list[dict]
    seeds: list[int]
    num_cpus: float
    num_gpus: float
    runs: str | None = None
    pairs: str = "consecutive"
    population: bool = True


@dataclass(frozen=True)
class SweepSpec:
    """A checked spec: the file, its raw TOML (recorded in sweep.json), data set and groups."""

    path: Path
    raw: dict
    data: dict
    groups: list[Group]


class _Where:
    """Error messages that name the file, the place in it and the fix."""

    def __init__(self, path: Path, place: str):
        self.path, self.place = path, place

    def error(self, key: str, why: str, fix: str) -> IsthmusError:
        at = f"{self.place}, key {key!r}" if key else self.place
        return IsthmusError(f"{self.path}: {at}: {why}; fix: {fix}")


def _value(w: _Where, key: str, v, rule) -> object:
    """One setting checked against (types, parser, default): the commands' ranges and types."""
    types, parse, _ = rule
    if isinstance(v, bool) and bool not in types:
        raise w.error(key, f"expected {types[0].__name__}, got {v!r}", f"write {key} = <value>")
    if not isinstance(v, types):
        raise w.error(
            key,
            f"expected {' or '.join(t.__name__ for t in types)}, got {type(v).__name__} {v!r}",
            'write a value of that type (TOML: 3, 0.5, true, "text", [1, 2])',
        )
    if isinstance(v, float) and not math.isfinite(v):
        raise w.error(key, f"must be finite, got {v!r}", "write a finite number")
    if parse is None:
        return v
    try:
        if key == "channels":
            return list(parse(v if isinstance(v, str) else ",".join(map(str, v))))
        if isinstance(v, list):  # a width per hidden layer
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise argparse.ArgumentTypeError(f"expected a list of integers, got {v!r}")
            return [parse(str(x)) for x in v]
        if isinstance(v, str):
            return parse(v)
        out = parse(str(v))
        return float(out) if float in types else out
    except argparse.ArgumentTypeError as e:
        raise w.error(
            key, str(e), f"set {key} inside that range or to one of those values"
        ) from None


def _table(w: _Where, key: str, v) -> dict:
    if not isinstance(v, dict):
        raise w.error(
            key, f"must be a table, got {type(v).__name__}", f"write [{key}] or {key} = {{...}}"
        )
    return v


def _unknown(w: _Where, d: dict, known, what: str) -> None:
    extra = [k for k in d if k not in known]
    if extra:
        raise w.error(
            extra[0],
            f"unknown {what}",
            f"remove it or correct its spelling; known: {', '.join(sorted(known))}",
        )


def _points(w: _Where, kind: str, g: dict) -> tuple[list[dict], list[dict]]:
    """Every point's settings (defaults, then the group's base, then the point's values) and
    the values of each point (what varies)."""
    rules = SETTINGS[kind]
    base = {k: rules[k][2] for k in rules}
    for k in rules:
        if k in g:
            base[k] = _value(w, k, g[k], rules[k])
    if "grid" in g and "list" in g:
        raise w.error("list", "a group has either grid or list, not both", "keep one of them")
    if "grid" in g:
        grid = _table(w, "grid", g["grid"])
        _unknown(_Where(w.path, f"{w.place}.grid"), grid, rules, "setting")
        axes = []
        for k, vs in grid.items():
            if not isinstance(vs, list) or not vs:
                raise w.error(
                    f"grid.{k}", "must be a non-empty list of values", f"write {k} = [a, b]"
                )
            gw = _Where(w.path, f"{w.place}.grid")
            axes.append([_value(gw, k, v, rules[k]) for v in vs])
        values = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*axes)]
    elif "list" in g:
        pts = g["list"]
        if not isinstance(pts, list) or not pts or not all(isinstance(p, dict) for p in pts):
            raise w.error(
                "points",
                "must be a non-empty list of tables",
                "write points = [{lr = 0.1}, {lr = 0.2}]",
            )
        values = []
        for i, p in enumerate(pts):
            pw = _Where(w.path, f"{w.place}.list[{i}]")
            _unknown(pw, p, rules, "setting")
            values.append({k: _value(pw, k, v, rules[k]) for k, v in p.items()})
    else:
        values = [{}]
    points = [base | v for v in values]
    for p in points:  # a width left unset is the model kind's default, as in `isthmus train`
        if "width" in p and p["width"] is None:
            p["width"] = default_width(p["model"])
    return points, values


def configs(s: dict, input_shape, num_classes: int) -> tuple[ModelConfig, TrainConfig]:
    """A train point's settings as (ModelConfig, TrainConfig) for data of that input shape and
    number of classes."""
    width, plan = s["width"], s["channels"]
    mc = ModelConfig(
        kind=s["model"], depth=s["depth"], width=tuple(width) if isinstance(width, list) else width,
        channels=tuple(channels(plan) if isinstance(plan, str) else plan), bias=s["bias"],
        batchnorm=s["batchnorm"], input_shape=tuple(input_shape), num_classes=num_classes,
        layernorm=s["layernorm"], heads=s["heads"], patch=s["patch"],
    )  # fmt: skip
    return mc, TrainConfig(**{k: s[k] for k in TRAIN})


def check_models(spec: SweepSpec, input_shape, num_classes: int) -> None:
    """Every train point's configurations checked as `isthmus train` checks them, on the data
    set's input shape and classes (known once the data set is loaded)."""
    for g in spec.groups:
        for i, s in enumerate(g.points if g.kind == "train" else []):
            where = f"{spec.path}: [[train]] {g.name!r}, point {i} ({label(g.values[i])})"
            try:
                mc, tc = configs(s, input_shape, num_classes)
                mc.validate(where)
                tc.validate(where)
            except (IsthmusError, TypeError) as e:
                msg = str(e) if str(e).startswith(where) else f"{where}: {e}"
                raise IsthmusError(
                    f"{msg}; fix: change the group's settings so that `isthmus train` would "
                    "accept them"
                ) from None


def label(values: dict) -> str:
    """A point's name in tables and figures: its varying settings, e.g. "lr=0.1 width=16"."""
    return (
        " ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in values.items()
        )
        or "-"
    )


def _group(path: Path, kind: str, i: int, g, names: dict) -> Group:
    w = _Where(path, f"[[{kind}]] number {i + 1}")
    if not isinstance(g, dict):
        raise w.error(
            "", f"must be a table, got {type(g).__name__}", f"write [[{kind}]] and its keys"
        )
    extra = (
        DEPENDENT | (PAIRS if kind == "connect" else {}) if kind != "train" else {"population": ""}
    )
    name = g.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise w.error(
            "name",
            f"needs a name of letters, digits, _ . - (got {name!r})",
            'write name = "lr_grid"',
        )
    w = _Where(path, f"[[{kind}]] {name!r}")
    _unknown(w, g, set(GROUP) | set(extra) | set(SETTINGS[kind]), "key")
    if name in names:
        raise w.error(
            "name",
            f"the name is used twice ({names[name]} and {kind})",
            "give each group its own name",
        )
    names[name] = kind
    seeds = g.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds):
        raise w.error(
            "seeds",
            f"must be a non-empty list of distinct seeds, got {seeds!r}",
            "write seeds = [0, 1, 2]",
        )
    seeds = [_value(w, "seeds", s, (INT, seed, 0)) for s in seeds]
    cpus = _value(w, "num_cpus", g.get("num_cpus", 1), (NUM, real(0, 1e4, open_lo=True), 1))
    gpus = _value(w, "num_gpus", g.get("num_gpus", 0), (NUM, real(0, 1e3), 0))
    points, values = _points(w, kind, g)
    kw: dict = {}
    if kind == "train":
        kw["population"] = _value(w, "population", g.get("population", True), (BOOL, None, True))
    else:
        runs = g.get("runs")
        if names.get(runs) != "train":
            known = [n for n, k in names.items() if k == "train"]
            raise w.error(
                "runs",
                f"names no [[train]] group (got {runs!r})",
                f"write runs = one of {known or 'the [[train]] group names'}",
            )
        kw["runs"] = runs
        if kind == "connect":
            kw["pairs"] = _value(
                w, "pairs", g.get("pairs", "consecutive"), (STR, _choice("consecutive", "all"), "")
            )
    return Group(kind, name, points, values, seeds, float(cpus), float(gpus), **kw)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; every problem is an IsthmusError naming the file, the key and
    the fix."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise IsthmusError(f"{path}: no such spec file; give the path of a .toml file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IsthmusError(f"{path}: cannot read it ({e}); give a readable .toml file") from None
    except tomllib.TOMLDecodeError as e:
        raise IsthmusError(f"{path}: not valid TOML ({e}); fix the syntax at that place") from None
    top = _Where(path, "top level")
    _unknown(top, raw, ("data", *KINDS), "key")
    dw = _Where(path, "[data]")
    d = _table(top, "data", raw.get("data", {}))
    _unknown(dw, d, DATA, "key")
    data = {k: d[k] if k in d else default for k, (_, default) in DATA.items()}
    for k, (types, _) in DATA.items():
        if k in d:
            data[k] = _value(dw, k, d[k], (types, DATA_PARSE[k], None))
    names: dict[str, str] = {}
    groups = []
    for kind in KINDS:
        entries = raw.get(kind, [])
        if not isinstance(entries, list):
            raise top.error(
                kind, "must be an array of tables", f"write [[{kind}]] before each group"
            )
        groups += [_group(path, kind, i, g, names) for i, g in enumerate(entries)]
    if not groups:
        raise top.error("", "no job groups", "add a [[train]] group (docs/sweeps.md)")
    return SweepSpec(path, raw, data, groups)


def _pairs(seeds: list[int], how: str) -> list[tuple[int, int]]:
    if how == "all":
        return list(itertools.combinations(seeds, 2))
    return list(zip(seeds, seeds[1:], strict=False))


def plan(spec: SweepSpec) -> list[dict]:
    """The spec's jobs, in a fixed order (train groups first, then connect, stability, hessian,
    each in the order written): plain dicts that travel to worker processes and into sweep.json.

    A train group is one job per population (points that can share one, x all seeds) or, with
    `population = false` or BatchNorm, one job per net; a connect group one job per pair of nets
    of a train point, x its own points and seeds; stability and hessian one job per net, x
    theirs. "deps" lists the jobs whose nets a job reads."""
    jobs: list[dict] = []
    nets: dict[tuple[str, int, int], tuple[str, str]] = {}  # (group, point, seed) -> job, run
    groups = {g.name: g for g in spec.groups}
    for g in spec.groups:
        common = {"kind": g.kind, "group": g.name, "num_cpus": g.num_cpus, "num_gpus": g.num_gpus}
        if g.kind == "train":
            batches: dict = {}
            for i, s in enumerate(g.points):
                if g.population and not s["batchnorm"]:
                    key = population_key(*configs(s, (1,), 1))
                    batches.setdefault(key, []).append((i, None))
                else:
                    for sd in g.seeds:
                        batches[(i, sd)] = [(i, sd)]
            for k, members in enumerate(batches.values()):
                single = members[0][1] is not None
                seeds = [members[0][1]] if single else g.seeds
                idx = [i for i, _ in members]
                jid = f"{g.name}/p{idx[0]}-s{seeds[0]}" if single else f"{g.name}/pop{k}"
                jobs.append(
                    common | {"id": jid, "deps": [], "points": idx, "seeds": seeds,
                              "settings": [g.points[i] for i in idx],
                              "values": [g.values[i] for i in idx]}
                )  # fmt: skip
                for m, (i, sd) in enumerate(itertools.product(idx, seeds)):
                    nets[(g.name, i, sd)] = (jid, f"jobs/{jid}/0/{m}")  # `train_points` layout
            continue
        t = groups[g.runs]
        sets = _pairs(t.seeds, g.pairs) if g.kind == "connect" else [(sd,) for sd in t.seeds]
        if not sets:
            raise _Where(spec.path, f"[[connect]] {g.name!r}").error(
                "runs", f"train group {t.name!r} has one seed, so no pair of nets to join",
                f"give [[train]] {t.name!r} at least two seeds",
            )  # fmt: skip
        for j, tv in enumerate(t.values):
            for which in sets:
                inputs = [
                    {"group": t.name, "point": j, "seed": a, "label": label(tv), "values": tv,
                     "run": nets[(t.name, j, a)][1]}
                    for a in which
                ]  # fmt: skip
                deps = sorted({nets[(t.name, j, a)][0] for a in which})
                nets_tag = "-".join(f"s{a}" for a in which)
                for i, (settings, values) in enumerate(zip(g.points, g.values, strict=True)):
                    for sd in g.seeds:
                        jobs.append(
                            common | {"id": f"{g.name}/r{j}-{nets_tag}-p{i}-seed{sd}", "deps": deps,
                                      "point": i, "seed": sd, "settings": settings,
                                      "values": values, "inputs": inputs}
                        )  # fmt: skip
        if len(jobs) > MAX_JOBS:
            break
    if len(jobs) > MAX_JOBS:
        raise IsthmusError(
            f"{spec.path}: the spec expands to more than {MAX_JOBS} jobs; fix: check the grids "
            "and seeds for a typo, or split the sweep into several specs"
        )
    return jobs
