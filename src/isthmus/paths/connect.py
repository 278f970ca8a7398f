"""Connect two nets by any path method, evaluate the path, and read/write it as files.

One entry point for every kind of path between two minima of one architecture: the straight line,
a fitted polygonal chain or Bezier curve (Garipov et al. 2018), AutoNEB (Draxler et al. 2018), the
orthogonal path finder of Fort & Jastrzebski 2019 and the constructive paths from dropout or noise
stability (Kuditipudi et al. 2019). `connect` builds the path, evaluates train/test loss and
accuracy along it and, for comparison, along the straight line between the same ends
(docs/baselines.md, docs/provable_paths.md). `isthmus connect` is this function plus `save_path`;
a path written by it is read back with `load_path`.

    from isthmus import paths
    c = paths.connect(model, theta_a, theta_b, data, "bezier", seed=0)
    c.result.barrier, c.line.barrier        # the curve's barrier vs the straight line's

Files (docs/definitions.md): DIR/path.json (the evaluated `PathResult`) and DIR/path.safetensors
(the tensors that rebuild the path: control points, nodes and knots; header "method").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path as FsPath

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import IsthmusError
from ..io import (
    check_files,
    check_inputs,
    file_sha256,
    load_metadata,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from ..models import require_chain
from ..params import Params, bn_subset, eval_plan, has_bn
from ..progress import stage
from ..stability import StabilityResult
from .base import ParameterPath, PathResult, evaluate_path, line
from .bezier import BezierPath, unshared
from .chain import ChainPath, piecewise_from_tensors
from .dropout import ConstructivePath, connect_dropout
from .fit import FitConfig, fit_curve
from .neb import NEBConfig, connect_neb
from .noise import connect_noise
from .orthogonal import OrthogonalConfig, connect_orthogonal

METHODS = ("linear", "chain", "bezier", "neb", "orthogonal", "dropout", "noise")
NEB_EPOCHS, NEB_LR, NEB_OPTIMIZER = 20, 0.05, "sgd"  # AutoNEB defaults in epochs (see neb_config)
ORTHOGONAL_EPOCHS = 2  # epochs of optimisation per pivot of the orthogonal path finder
PATH_JSON, PATH_TENSORS = "path.json", "path.safetensors"


@dataclass(frozen=True)
class Connection:
    """A path between two nets and its evaluation.

    path: the path (t = 0 at A, t = 1 at B, exactly); result: train/test loss and accuracy along
    it, with `segments` for piecewise paths and the method's settings and history in `extra`;
    line: the same along the straight line between A and B.
    """

    path: ParameterPath
    result: PathResult
    line: PathResult


def eval_sizes(
    model: nn.Module, x: Tensor, batch_size: int | None = None, chunk: int | None = None
) -> tuple[int | None, int]:
    """Examples per forward pass and points per batched call when evaluating paths and grids on
    inputs like `x`: the chunk is `params.eval_plan`'s (the one rule, from the model's shapes and
    a memory budget); a batch size of None is left for `params.evaluate` to plan per split. Given
    values win."""
    return batch_size, chunk or eval_plan(model, x).chunk


def neb_config(
    n_train: int,
    *,
    epochs: int = NEB_EPOCHS,
    batch_size: int = 128,
    pivots: int = 3,
    cycles: int = 4,
    optimizer: str = NEB_OPTIMIZER,
    lr: float = NEB_LR,
    source: str = "NEB config",
) -> NEBConfig:
    """AutoNEB settings from a budget in epochs: `epochs` passes over the `n_train` training
    examples in minibatches of `batch_size`, spread evenly over `cycles` relax/insert cycles."""
    per_epoch = math.ceil(n_train / min(batch_size, n_train))
    cfg = NEBConfig(
        pivots=pivots,
        cycles=cycles,
        steps=max(1, math.ceil(epochs * per_epoch / cycles)),
        optimizer=optimizer,
        lr=lr,
    )
    cfg.validate(source)
    return cfg


def orthogonal_config(
    n_train: int,
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    source: str = "orthogonal config",
    **kw,
) -> OrthogonalConfig:
    """Orthogonal path finder settings with `epochs` (None: ORTHOGONAL_EPOCHS) passes over the
    `n_train` training examples in minibatches of `batch_size` per pivot; the other fields
    (depth, tolerance, optimizer, lr) in `kw`, where None keeps the default."""
    per_epoch = math.ceil(n_train / min(batch_size, n_train))
    given = {k: v for k, v in kw.items() if v is not None}
    epochs = ORTHOGONAL_EPOCHS if epochs is None else epochs
    cfg = OrthogonalConfig(steps=max(1, epochs * per_epoch), **given)
    cfg.validate(source)
    return cfg


def segments(result: PathResult, knots: list[float]) -> list[dict]:
    """One entry per straight segment of a piecewise path, read off the evaluated profile:
    its ends t0, t1, the train loss there and the highest train loss inside."""
    t, loss = result.t, result.train_loss
    out = []
    for t0, t1 in zip(knots, knots[1:], strict=False):
        inside = [i for i, v in enumerate(t) if t0 - 1e-12 <= v <= t1 + 1e-12]
        i0 = min(inside, key=lambda i: abs(t[i] - t0))
        i1 = min(inside, key=lambda i: abs(t[i] - t1))
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


def connect(
    model: nn.Module,
    a: Params,
    b: Params,
    data: Dataset,
    method: str = "bezier",
    *,
    bends: int = 1,
    fit: FitConfig | None = None,
    neb: NEBConfig | None = None,
    orthogonal: OrthogonalConfig | None = None,
    neb_batch_size: int = 128,
    stability: tuple[StabilityResult | None, StabilityResult | None] = (None, None),
    points: int = 61,
    batch_size: int | None = None,
    chunk: int | None = None,
    seed: int = 0,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> Connection:
    """A path from net `a` to net `b` by `method`, evaluated on `data` (and the straight line).

    Args:
      method: "linear", "chain" or "bezier" (`bends` bends fitted with `fit`, default
        FitConfig()), "neb" (AutoNEB with `neb`, default `neb_config(len(data.x_train))`, on
        minibatches of `neb_batch_size`), "orthogonal" (Fort & Jastrzebski's finder with
        `orthogonal`, default `orthogonal_config(len(data.x_train))`, on minibatches of
        `neb_batch_size`), "dropout" or "noise" (the constructive paths; `stability`
        gives both nets' stability results, searched afresh where None).
      points: values of t evaluated; batch_size, chunk: examples per forward pass and points per
        batched call (default `eval_sizes`). BatchNorm nets get statistics on
        `params.bn_subset(data.x_train)`.
      seed: the minibatches of the fit, NEB or the orthogonal finder, and the stability searches.
      checkpoint, resume: folder where a curve fit (every epoch), AutoNEB (every cycle) or the
        orthogonal finder (every pivot) saves its state, and whether to continue from it.
    """
    if method not in METHODS:
        raise IsthmusError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if bends < 1:
        raise IsthmusError(f"bends must be >= 1, got {bends}")
    if method in ("dropout", "noise"):  # refused before the straight line is evaluated
        require_chain(model, f"the Theorem {1 if method == 'dropout' else 2} path")
    batch_size, chunk = eval_sizes(model, data.x_train, batch_size, chunk)
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    kw = dict(points=points, batch_size=batch_size, chunk=chunk, bn_x=bn_x, progress=progress)
    stage(f"straight line: {points} points", progress=progress)
    straight = evaluate_path(model, line(a, b), data, **kw)
    if method != "linear":
        stage(f"{method} path: search", progress=progress)
    extra: dict = {"data": data.name, "seed": seed}
    if method == "linear":
        path, result = line(a, b), straight
    elif method in ("chain", "bezier"):
        cfg = fit or FitConfig()
        cfg.validate()
        init = (BezierPath if method == "bezier" else ChainPath).on_line(a, b, bends)
        f = fit_curve(
            model, init, data, cfg, seed=seed, checkpoint=checkpoint, resume=resume,
            progress=progress,
        )  # fmt: skip
        path = f.path
        stage(f"{method} path: {points} points", progress=progress)
        result = evaluate_path(model, path, data, **kw)
        extra.update(bends=bends, fit=asdict(cfg), fit_history=f.history)
    elif method == "neb":
        cfg = neb or neb_config(len(data.x_train), batch_size=neb_batch_size)
        path, res = connect_neb(
            model, a, b, data, cfg, batch_size=neb_batch_size, seed=seed, checkpoint=checkpoint,
            resume=resume, progress=progress,
        )  # fmt: skip
        stage(f"{method} path: {points} points", progress=progress)
        result = evaluate_path(model, path, data, **kw)
        extra.update(neb=asdict(cfg), neb_history=res.history, pivots=len(res.pivots))
    elif method == "orthogonal":
        cfg = orthogonal or orthogonal_config(len(data.x_train), batch_size=neb_batch_size)
        path, res = connect_orthogonal(
            model, a, b, data, cfg, batch_size=neb_batch_size, seed=seed, checkpoint=checkpoint,
            resume=resume, progress=progress,
        )  # fmt: skip
        stage(f"{method} path: {points} points", progress=progress)
        result = evaluate_path(model, path, data, **kw)
        extra.update(orthogonal=asdict(cfg), orthogonal_history=res.history)
        extra.update(pivots=len(res.history))
    else:
        connect_fn = connect_dropout if method == "dropout" else connect_noise
        path, result = connect_fn(
            model, a, b, data, stability_a=stability[0], stability_b=stability[1], seed=seed,
            points=points, progress=progress,
        )  # fmt: skip
    if method in ("chain", "neb", "orthogonal"):
        result = replace(result, segments=segments(result, path.knots()))
    if method != "linear":
        extra["linear"] = {"barrier": straight.barrier}
    return Connection(path, replace(result, extra={**result.extra, **extra}), straight)


def save_path(
    folder: str | FsPath, path: ParameterPath, result: PathResult, inputs: dict | None = None
) -> None:
    """Write FOLDER/path.safetensors (the path), then FOLDER/path.json (the evaluation, `inputs`:
    the `io.inputs_record` of the two runs, and "files": the sha256 of path.safetensors), so a
    folder whose path.json is there is complete and its parts belong together."""
    folder = FsPath(folder)
    save_tensors(folder / PATH_TENSORS, unshared(path.tensors()), {"method": path.method})
    extra = {"inputs": inputs} if inputs is not None else {}
    files = {"files": {PATH_TENSORS: file_sha256(folder / PATH_TENSORS)}}
    write_json(folder / PATH_JSON, result.to_json() | extra | files)


def load_path(
    folder: str | FsPath,
    device: str | torch.device | None = None,
    expect: Sequence[tuple[str | FsPath, Params]] | None = None,
) -> ParameterPath:
    """The path written by `save_path` (or `isthmus connect`) into `folder`; refused unless
    path.safetensors is the file path.json was written with (its "files" record) and, with
    `expect` = [(name, weights) of A, of B], unless it was computed for exactly those two runs
    (its "inputs" record, `io.check_inputs`; with more runs: for two of them, in either order)."""
    folder = FsPath(folder)
    where = folder / PATH_JSON
    doc = read_json(where)
    check_files(where, doc, [PATH_TENSORS], "isthmus connect")
    if expect is not None:
        _check_pair(where, doc, list(expect))
    method = load_metadata(folder / PATH_TENSORS).get("method")
    if doc.get("method") != method or method not in METHODS:
        raise IsthmusError(
            f"{where}: field 'method' is {doc.get('method')!r} but {PATH_TENSORS} holds a "
            f"{method!r} path; re-create the folder with `isthmus connect`"
        )
    tensors = {k: v.to(device) for k, v in load_tensors(folder / PATH_TENSORS).items()}
    try:
        if method == "bezier":
            return BezierPath.from_tensors(tensors)
        knots = tensors.pop("knots", None)
        if knots is not None:
            tensors["knots"] = knots.cpu()
        if method in ("dropout", "noise"):
            # the named dropout versions make the reloaded path certifiable again
            return ConstructivePath.from_tensors(tensors, method, versions=doc.get("versions"))
        return piecewise_from_tensors(tensors, method)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
        raise IsthmusError(
            f"{folder / PATH_TENSORS}: does not describe a {method!r} path ({e}); re-create the "
            "folder with `isthmus connect`"
        ) from None


def _check_pair(where: FsPath, doc: dict, runs: list[tuple[str | FsPath, Params]]) -> None:
    """`io.check_inputs` for two runs; for more, the path must join two of them (either order)."""
    if len(runs) == 2:
        check_inputs(where, doc, runs)
        return
    for a in runs:
        for b in runs:
            if a is not b:
                try:
                    check_inputs(where, doc, [a, b])
                    return
                except IsthmusError:
                    pass
    check_inputs(where, doc, runs[:2])  # no pair matched: the message of the first pair
