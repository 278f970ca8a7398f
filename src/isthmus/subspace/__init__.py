"""Low-loss subspaces joining many solutions (Fort & Jastrzebski 2019; Benton et al. 2021;
Wortsman et al. 2021): simplicial complexes of parameter points, fitted with `paths.fit`."""

from .complex import SimplicialComplex, log_volume, mean_squared_cosine, star, vertices_from_tensors

__all__ = [
    "SimplicialComplex",
    "log_volume",
    "mean_squared_cosine",
    "star",
    "vertices_from_tensors",
]
