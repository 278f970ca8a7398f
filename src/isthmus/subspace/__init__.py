"""Low-loss subspaces joining many solutions (Fort & Jastrzebski 2019; Benton et al. 2021;
Wortsman et al. 2021): simplicial complexes of parameter points, fitted with `paths.fit`; a simplex
grown from one solution vertex by vertex (`grow_simplex`, SPRO) and a line or simplex trained from
scratch (`train_subspace`)."""

from .complex import SimplicialComplex, log_volume, mean_squared_cosine, star, vertices_from_tensors
from .grow import grow_simplex
from .scratch import train_subspace

__all__ = [
    "SimplicialComplex",
    "grow_simplex",
    "log_volume",
    "mean_squared_cosine",
    "star",
    "train_subspace",
    "vertices_from_tensors",
]
