"""A low-loss simplex grown from one solution, vertex by vertex (Benton et al. 2021's SPRO,
simplicial pointwise random optimisation).

Start from the solution v_0 (fixed for good). Stage j = 1..k adds vertex v_j and trains it alone,
with v_0..v_{j-1} fixed, on the expected loss over the j-simplex (v_0..v_j) minus `volume` times
its log-volume (`SimplicialComplex` with one simplex and the volume penalty; `paths.fit.fit_family`
trains it, points drawn uniformly inside the simplex). The volume term keeps the new vertex from
falling back onto the others: without it the loss alone would shrink the simplex.

Initialisation (our choice; Benton et al. start a new vertex at the centroid of the old ones, where
the log-volume is -infinity): v_j = centroid(v_0..v_{j-1}) + init_scale * d_j, with d_j a
filter-normalised random direction drawn at the centroid (every filter of d_j has the norm of that
filter of the centroid, biases and BatchNorm parameters zero:
`surface.filter_normalized_direction`), so init_scale is a relative size. On a Landscape (no filters) d_j is a random unit vector, so there
init_scale is a distance. d_j comes from stream (seed, j), so it is almost surely off the span of
the earlier vertices and the log-volume is finite.

Checkpoints: stage j is fitted with its own checkpoint folder CHECKPOINT/vertex{j} (every epoch,
`fit_family`), so `resume` skips finished stages (their fit is reloaded from their last epoch),
continues the interrupted one where it stopped and starts the rest afresh, to the same numbers.
CHECKPOINT/grow.json records k, volume and init_scale, so a checkpoint of other settings is
refused (`fit_family` itself refuses other fit settings, seeds and fixed vertices).
"""

from __future__ import annotations

from pathlib import Path as FsPath

import torch
from torch import nn

from ..data import Dataset
from ..errors import IsthmusError
from ..io import check_resume, read_json, write_json
from ..landscape import Landscape, as_point
from ..landscape import flat as flat_point
from ..params import Params, is_float
from ..paths.fit import CHECKPOINT, FitConfig, FitResult, fit_family
from ..seeding import derive_seed, generator
from ..surface import filter_normalized_direction
from .complex import SimplicialComplex

VOLUME = 1e-6  # Benton et al.'s weight of the log-volume term (their CIFAR setting)
INIT_SCALE = 0.1  # size of a new vertex's offset from the centroid, relative to the filters
GROW = FitConfig()  # every stage's fit: `paths.fit`'s defaults (20 epochs, 4 points per step)
_DIRECTION, _STAGE = 223, 227  # seeding purposes: a new vertex's offset; a stage's fit
SETTINGS = "grow.json"  # the checkpoint's record of k, volume and init_scale


def centroid(vertices: list[Params]) -> Params:
    """The mean of the vertices on floating tensors (others from the first vertex)."""
    first = vertices[0]
    return {
        k: torch.stack([v[k] for v in vertices]).mean(0) if is_float(t) else t
        for k, t in first.items()
    }


def initial_vertex(vertices: list[Params], j: int, init_scale: float, seed: int) -> Params:
    """Where vertex j starts: the centroid of `vertices` plus init_scale times a random
    filter-normalised direction (a random unit vector for a Landscape point), stream (seed, j)."""
    c = centroid(vertices)
    if set(c) == {"x"} and c["x"].dim() == 1:  # a Landscape point (`landscape.as_point`)
        x = flat_point(c)
        g = generator(seed, j, _DIRECTION)
        d = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)
        return as_point(x + init_scale * d / d.norm())
    d = filter_normalized_direction(c, seed=derive_seed(seed, j, _DIRECTION))
    return {k: c[k] + init_scale * d[k] if is_float(t) else t for k, t in c.items()}


def grow_simplex(
    model: nn.Module | Landscape,
    solution: Params,
    k: int,
    data: Dataset | None = None,
    cfg: FitConfig = GROW,
    *,
    volume: float = VOLUME,
    init_scale: float = INIT_SCALE,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
) -> tuple[SimplicialComplex, list[FitResult]]:
    """A k-simplex grown from `solution` by SPRO (module doc): k stages of `cfg.epochs` epochs
    each, vertex j trained with vertices 0..j-1 fixed.

    Args:
      model: a module (with `data`) or a Landscape (`solution` then {"x": vector}).
      k: dimension of the simplex (k >= 1 new vertices).
      cfg: the fit of every stage (`paths.fit.FitConfig`; `samples` points per minibatch).
      volume: weight of the -log-volume term; init_scale: a new vertex's relative offset.
      seed: a stage's minibatches and draws come from (seed, stage); its offset from (seed, j).
      checkpoint, resume: folder with one subfolder per stage (vertex1, ..., vertexk).
    Returns: the complex [solution, v_1, ..., v_k] with one simplex, the solution fixed, and
    every stage's fit (its `history`: the mean objective per epoch).
    """
    if not isinstance(k, int) or k < 1:
        raise IsthmusError(f"grow: k (the simplex dimension) must be an integer >= 1, got {k!r}")
    if volume < 0 or not init_scale > 0:
        raise IsthmusError(
            f"grow: volume must be >= 0 and init_scale > 0, got {volume} and {init_scale}"
        )
    ckpt = FsPath(checkpoint) if checkpoint is not None else None
    settings = {"k": k, "volume": volume, "init_scale": init_scale}
    if resume:
        saved = read_json(ckpt / SETTINGS) if ckpt and (ckpt / SETTINGS).exists() else None
        check_resume(ckpt / SETTINGS if ckpt else None, saved, settings, what="grown simplex")
    elif ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        write_json(ckpt / SETTINGS, settings)
    vertices, fits = [solution], []
    for j in range(1, k + 1):
        start = initial_vertex(vertices, j, init_scale, seed)
        family = SimplicialComplex(
            [*vertices, start], [tuple(range(j + 1))], fixed=range(j), volume=volume
        )
        stage = ckpt / f"vertex{j}" if ckpt is not None else None
        again = resume and stage is not None and (stage / CHECKPOINT).exists()
        fit = fit_family(
            model, family, data, cfg, seed=derive_seed(seed, j, _STAGE), progress=progress,
            checkpoint=stage, resume=again,
        )  # fmt: skip
        vertices = fit.path.controls()  # fixed ones: the same tensors as passed in
        fits.append(fit)
    cx = SimplicialComplex(vertices, [tuple(range(k + 1))], fixed=[0], volume=volume)
    return cx, fits
