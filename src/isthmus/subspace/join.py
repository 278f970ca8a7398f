"""Joining N given solutions by a complex with M shared connectors (Benton et al. 2021).

The complex is `complex.star`: one M-simplex per solution (the solution plus every connector), the
solutions fixed, the connectors trained by `paths.fit.fit_family` on the expected loss over uniform
draws from the complex, plus `volume` times minus the mean log-volume of its simplices.

Where the connectors start. The centroid of the solutions is the natural centre, but M connectors
all at the centroid are one point: every simplex is then degenerate (log-volume -inf) and, since
the objective treats the connectors symmetrically, their gradients are equal as long as they
coincide, so they never separate. Connector j starts instead at

    c_j = centroid + init_scale * s_k * e_j,   e_j ~ N(0, I) per entry, seeded by (seed, j),

where s_k is the root-mean-square spread of tensor k over the solutions (sqrt of the mean over
entries and solutions of (v_i - centroid)^2): a perturbation sized layer by layer like the
solutions' own differences, so the connectors are distinct and every simplex has positive volume
(with probability 1) for any M, also when M exceeds N. Only trainable tensors are perturbed
(BatchNorm running statistics are never trained: the centroid is kept there).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..data import Dataset
from ..errors import IsthmusError
from ..io import check_resume, read_json, write_json
from ..landscape import Landscape, is_landscape
from ..params import Params, check_compatible, is_float
from ..paths.fit import FitConfig, FitResult, fit_family
from ..seeding import generator
from .complex import SimplicialComplex, star

CONNECTOR_STREAM = 79  # seeding purpose: the connectors' initial perturbations
INIT_SCALE = 0.1  # connector perturbation, in units of the solutions' spread per tensor
VOLUME = 1e-6  # Benton et al.'s default weight of the log-volume term
JOIN_FIT = FitConfig(epochs=200, lr=0.05, samples=1, penalty_every=16)  # see `join`
SETTINGS = "join.json"  # the checkpoint's record of the complex's own settings


def trained_keys(target: nn.Module | Landscape, like: Params) -> list[str]:
    """The tensors a fit moves: the module's parameters (not BN buffers), or all of a Landscape
    point's."""
    if is_landscape(target):
        return [k for k in like if is_float(like[k])]
    names = {n for n, _ in target.named_parameters()}
    return [k for k in like if k in names]


def initial_connectors(
    solutions: Sequence[Params],
    count: int,
    keys: Sequence[str],
    *,
    seed: int = 0,
    scale: float = INIT_SCALE,
) -> list[Params]:
    """`count` connectors around the solutions' centroid (module doc); `keys` are perturbed."""
    if len(solutions) < 2 or count < 1:
        raise IsthmusError(
            f"joining needs >= 2 solutions and >= 1 connector, got {len(solutions)} and {count}"
        )
    if not (scale > 0):
        raise IsthmusError(f"the connectors' initial scale must be > 0, got {scale}")
    for i, s in enumerate(solutions[1:], 1):
        check_compatible(solutions[0], s, ("solution 0", f"solution {i}"))
    first = solutions[0]
    centroid = {
        k: torch.stack([s[k] for s in solutions]).mean(0) if is_float(v) else v.clone()
        for k, v in first.items()
    }
    spread = {
        k: torch.stack([s[k] - centroid[k] for s in solutions]).pow(2).mean().sqrt() for k in keys
    }
    out = []
    for j in range(count):
        g = generator(seed, j, CONNECTOR_STREAM)
        c = {k: v.clone() for k, v in centroid.items()}
        for k in keys:  # in the solutions' key order: the draws do not depend on `keys`' order
            e = torch.randn(c[k].shape, generator=g, dtype=torch.float64)
            c[k] = c[k] + (scale * spread[k] * e.to(c[k])).to(c[k].dtype)
        out.append(c)
    return out


def join(
    target: nn.Module | Landscape,
    solutions: Sequence[Params],
    data: Dataset | None = None,
    *,
    connectors: int = 2,
    cfg: FitConfig = JOIN_FIT,
    volume: float = VOLUME,
    init_scale: float = INIT_SCALE,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    max_epochs: int | None = None,
) -> tuple[SimplicialComplex, FitResult]:
    """The complex joining `solutions` (fixed, bit for bit) by `connectors` trained connectors.

    Args:
      target: a module with `data`, or a Landscape (no data; one full step per epoch).
      cfg: the fit (`paths.fit.FitConfig`). The default, one draw per minibatch as Benton et al.,
        200 epochs of SGD (momentum 0.9) at lr 0.05 with a cosine schedule, the volume term every
        16th step with 16 times its weight (lazy regularisation: on a small net the Gram matrix
        it needs costs about half a training step), joins five mnist1d
        CNNs within 0.1 nats of their worst train loss; five MLPs 3x256 need longer (README,
        "Subspaces joining many solutions").
      volume: weight of minus the mean log-volume of the simplices (0: none).
      seed: the connectors' start, the minibatches and the draws.
      checkpoint, resume: fit_family's per-epoch checkpoint folder, and whether to continue it
        (a checkpoint of other solutions, connectors or settings is refused).
      max_epochs: stop early (tests of resuming).
    Returns: the trained complex (vertices [solutions..., connectors...]) and the fit's result.
    """
    keys = trained_keys(target, solutions[0])
    init = initial_connectors(solutions, connectors, keys, seed=seed, scale=init_scale)
    family = star(list(solutions), init, volume=volume)
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        settings = {
            "connectors": connectors,
            "volume": volume,
            "init_scale": init_scale,
            "simplices": [list(s) for s in family.simplices],
        }
        if resume:
            saved = read_json(ckpt / SETTINGS) if (ckpt / SETTINGS).exists() else None
            check_resume(ckpt / SETTINGS, saved, settings, what="subspace fit")
        else:
            ckpt.mkdir(parents=True, exist_ok=True)
            write_json(ckpt / SETTINGS, settings)
    res = fit_family(
        target, family, data, cfg, seed=seed, progress=progress, checkpoint=checkpoint,
        resume=resume, max_epochs=max_epochs,
    )  # fmt: skip
    cx = res.path
    assert isinstance(cx, SimplicialComplex)
    return cx, res
