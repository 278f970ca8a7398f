"""A line or simplex of nets trained from scratch, every vertex learned (Wortsman et al. 2021,
"Learning Neural Network Subspaces").

The k + 1 vertices start from independent initialisations (vertex i where `isthmus train --seed
seed+i` starts: `train.initial_params`) and are trained together on the expected loss over the
simplex, one point drawn uniformly inside it per minibatch (`cfg.samples`, 1 by default as in
their method), plus `cosine` times the mean squared cosine between the flattened vertices
(`SimplicialComplex`'s cosine penalty; their beta = 1 on CIFAR), which keeps the vertices apart:
without it the cheapest subspace is a collapsed one. `paths.fit.fit_family` does the training
(SGD with momentum or Adam, cosine schedule, optional L2; checkpoint every epoch and resume;
CHECKPOINT/scratch.json records k, the cosine weight and the architecture, so a checkpoint of
other settings is refused).
"""

from __future__ import annotations

from pathlib import Path as FsPath

from ..data import Dataset
from ..errors import IsthmusError
from ..io import check_resume, read_json, write_json
from ..models import ModelConfig, build_model
from ..paths.fit import FitConfig, FitResult, fit_family
from ..train import initial_params
from .complex import SimplicialComplex

COSINE = 1.0  # Wortsman et al.'s beta on CIFAR
# the budget and optimiser of `isthmus train` (30 epochs, SGD, lr 0.05, cosine schedule, batch
# 128), one point per minibatch: one net's training, which leaves a simplex undertrained on mnist1d
# (it needs two to four nets' budgets: docs/subspace_builders.md)
SCRATCH = FitConfig(epochs=30, lr=0.05, samples=1)
SETTINGS = "scratch.json"  # the checkpoint's record of k, cosine and the architecture


def train_subspace(
    model_cfg: ModelConfig,
    data: Dataset,
    k: int,
    cfg: FitConfig = SCRATCH,
    *,
    cosine: float = COSINE,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
) -> tuple[SimplicialComplex, FitResult]:
    """A k-simplex (k = 1: a line) of nets of `model_cfg` trained from scratch on `data`.

    Args:
      k: dimension (k + 1 vertices, all trainable).
      cfg: the fit (`paths.fit.FitConfig`); default SCRATCH (one point per minibatch).
      cosine: weight of the mean squared cosine between vertices (0: none).
      seed: vertex i starts from the initialisation of seed + i; minibatches and draws from seed.
      checkpoint, resume: `fit_family`'s folder (every epoch) and whether to continue from it.
    Returns: the complex of the k + 1 trained vertices (one simplex, none fixed) and the fit
    (its `history`: the mean objective per epoch).
    """
    if not isinstance(k, int) or k < 1:
        raise IsthmusError(f"from scratch: k (the dimension) must be an integer >= 1, got {k!r}")
    if checkpoint is not None:
        ckpt = FsPath(checkpoint)
        settings = {"k": k, "cosine": cosine, "model": model_cfg.to_dict()}
        if resume:
            saved = read_json(ckpt / SETTINGS) if (ckpt / SETTINGS).exists() else None
            check_resume(ckpt / SETTINGS, saved, settings, what="subspace from scratch")
        else:
            ckpt.mkdir(parents=True, exist_ok=True)
            write_json(ckpt / SETTINGS, settings)
    vertices = [initial_params(model_cfg, 0.0, seed + i) for i in range(k + 1)]
    family = SimplicialComplex(vertices, [tuple(range(k + 1))], cosine=cosine)
    fit = fit_family(
        build_model(model_cfg), family, data, cfg, seed=seed, progress=progress,
        checkpoint=checkpoint, resume=resume,
    )  # fmt: skip
    return fit.path, fit
