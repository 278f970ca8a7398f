"""`isthmus subspace` in one call: make a complex by one of three methods, evaluate it, write it.

  join:    N runs joined by M shared connectors (`join.join`, Benton et al. 2021);
  grow:    a k-simplex grown from one run vertex by vertex (`grow.grow_simplex`, SPRO);
  scratch: a k-simplex of nets trained from scratch (`scratch.train_subspace`, Wortsman et al.).

Every method is checkpointed in OUT/.checkpoint (`--resume`), evaluated by `evaluate_complex`
(the solutions: the given runs) and written by `save_subspace` (docs/subspaces.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from ..data import Dataset
from ..errors import IsthmusError
from ..io import Run, check_same_architecture, read_json
from ..models import ModelConfig, build_model
from ..paths.fit import FitConfig
from .evaluate import evaluate_complex
from .files import save_subspace
from .grow import GROW, grow_simplex
from .join import INIT_SCALE, JOIN_FIT, join
from .scratch import SCRATCH, train_subspace

DEFAULTS = {"join": JOIN_FIT, "grow": GROW, "scratch": SCRATCH}


def fit_config(method: str, source: str = "command line", **given) -> FitConfig:
    """The method's default fit with the given (not None) fields replaced, validated."""
    if method not in DEFAULTS:
        raise IsthmusError(f"method must be one of {', '.join(DEFAULTS)}, got {method!r}")
    cfg = replace(DEFAULTS[method], **{k: v for k, v in given.items() if v is not None})
    cfg.validate(source)
    return cfg


def build_subspace(
    method: str,
    out: str | Path,
    data: Dataset,
    *,
    runs: Sequence[Run] = (),
    k: int = 2,
    connectors: int = 2,
    model_cfg: ModelConfig | None = None,
    cfg: FitConfig | None = None,
    penalty: float | None = None,
    samples: int = 256,
    edge_points: int = 21,
    seed: int = 0,
    resume: bool = False,
    progress: bool | None = None,
    data_spec: dict | None = None,
) -> dict:
    """Make, evaluate and write a subspace into `out`; returns the subspace.json document.

    method "join" takes >= 2 `runs` and `connectors`; "grow" one run and the dimension `k`;
    "scratch" `model_cfg` and `k`. cfg: the fit (default: the method's, `DEFAULTS`); penalty:
    the volume weight (join, grow) or the cosine weight (scratch), None for the method's default.
    """
    cfg = cfg or fit_config(method)
    common = dict(samples=samples, edge_points=edge_points, seed=seed)
    ckpt = Path(out) / ".checkpoint"
    if method == "join":
        if len(runs) < 2:
            raise IsthmusError(f"joining needs >= 2 runs, got {len(runs)}")
        check_same_architecture(runs)
        kw = {} if penalty is None else {"volume": penalty}
        cx, res = join(
            runs[0].model, [r.params for r in runs], data, connectors=connectors, cfg=cfg,
            seed=seed, progress=progress, checkpoint=ckpt, resume=resume, **kw,
        )  # fmt: skip
        model, mdict = runs[0].model, runs[0].model_config.to_dict()
        given = [str(r.path) for r in runs]
        fit = {
            "config": asdict(cfg),
            "seed": seed,
            "history": res.history,
            "init_scale": INIT_SCALE,
        }
    elif method == "grow":
        if len(runs) != 1:
            raise IsthmusError(f"--grow takes exactly one run, got {len(runs)}")
        run = runs[0]
        kw = {} if penalty is None else {"volume": penalty}
        cx, fits = grow_simplex(
            run.model, run.params, k, data, cfg, seed=seed, progress=progress, checkpoint=ckpt,
            resume=resume, **kw,
        )  # fmt: skip
        model, mdict, given = run.model, run.model_config.to_dict(), [str(run.path)]
        fit = {"config": asdict(cfg), "seed": seed, "history": [h for f in fits for h in f.history],
               "stages": [f.history for f in fits]}  # fmt: skip
    elif method == "scratch":
        if model_cfg is None or runs:
            raise IsthmusError("--from-scratch takes a model (--model ...) and no runs")
        kw = {} if penalty is None else {"cosine": penalty}
        cx, res = train_subspace(
            model_cfg, data, k, cfg, seed=seed, progress=progress, checkpoint=ckpt, resume=resume,
            **kw,
        )  # fmt: skip
        model, mdict, given = build_model(model_cfg), model_cfg.to_dict(), []
        fit = {"config": asdict(cfg), "seed": seed, "history": res.history}
    else:
        raise IsthmusError(f"method must be one of {', '.join(DEFAULTS)}, got {method!r}")
    model = model.to(data.x_train.device)
    ev = evaluate_complex(model, cx, data, **common, progress=progress)
    default = {"name": data.name, "root": None, "seed": 0}  # a built-in set at its default seed
    spec = data_spec or (runs[0].config.get("data") if runs else default)
    path = save_subspace(out, cx, ev, method=method, model=mdict, data=spec, runs=given, fit=fit)
    return read_json(path)
