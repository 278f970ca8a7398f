"""Low-loss subspaces joining many solutions (Fort & Jastrzebski 2019; Benton et al. 2021;
Wortsman et al. 2021): simplicial complexes of parameter points, fitted with `paths.fit`,
evaluated (`evaluate_complex`) and stored as a folder (`save_subspace`, `load_subspace`)."""

from .complex import SimplicialComplex, log_volume, mean_squared_cosine, star, vertices_from_tensors
from .evaluate import ComplexEvaluation, evaluate_complex
from .files import Subspace, load_subspace, save_subspace
from .join import initial_connectors, join, join_runs

__all__ = [
    "ComplexEvaluation",
    "SimplicialComplex",
    "Subspace",
    "evaluate_complex",
    "initial_connectors",
    "join",
    "join_runs",
    "load_subspace",
    "log_volume",
    "mean_squared_cosine",
    "save_subspace",
    "star",
    "vertices_from_tensors",
]
