"""Low-loss subspaces joining many solutions (Fort & Jastrzebski 2019; Benton et al. 2021;
Wortsman et al. 2021): simplicial complexes of parameter points, fitted with `paths.fit`: N
solutions joined by shared connectors (`join`), a simplex grown from one solution vertex by vertex
(`grow_simplex`, SPRO) and a line or simplex trained from scratch (`train_subspace`); evaluated
(`evaluate_complex`) and stored as a folder (`save_subspace`, `load_subspace`)."""

from .complex import SimplicialComplex, log_volume, mean_squared_cosine, star, vertices_from_tensors
from .evaluate import ComplexEvaluation, evaluate_complex
from .files import Subspace, load_subspace, save_subspace
from .grow import grow_simplex
from .join import initial_connectors, join
from .scratch import train_subspace

__all__ = [
    "ComplexEvaluation",
    "SimplicialComplex",
    "Subspace",
    "evaluate_complex",
    "grow_simplex",
    "initial_connectors",
    "join",
    "load_subspace",
    "log_volume",
    "mean_squared_cosine",
    "save_subspace",
    "star",
    "train_subspace",
    "vertices_from_tensors",
]
