"""Paths between parameter points: lines, chains, Bezier curves, AutoNEB, the orthogonal path
finder, constructive paths; `connect` (any of them between two nets, evaluated),
`save_path`/`load_path` (their files) and the minimum spanning tree over many nets
(`connect_tree`)."""

from .base import ParameterPath as ParameterPath
from .base import PathResult as PathResult
from .base import PiecewiseLinearPath as PiecewiseLinearPath
from .base import barrier as barrier
from .base import evaluate_path as evaluate_path
from .base import line as line
from .bezier import BezierPath as BezierPath
from .certificate import ConstructivePath as ConstructivePath
from .certificate import certify as certify
from .chain import ChainPath as ChainPath
from .connect import Connection as Connection
from .connect import connect as connect
from .connect import load_path as load_path
from .connect import save_path as save_path
from .dropout import connect_dropout as connect_dropout
from .dropout import theorem1_path as theorem1_path
from .fit import Family as Family
from .fit import FitConfig as FitConfig
from .fit import fit_curve as fit_curve
from .fit import fit_family as fit_family
from .kept_pair import complementary_kept as complementary_kept
from .neb import NEBConfig as NEBConfig
from .neb import auto_neb as auto_neb
from .neb import connect_neb as connect_neb
from .noise import connect_noise as connect_noise
from .noise import theorem2_path as theorem2_path
from .orthogonal import OrthogonalConfig as OrthogonalConfig
from .orthogonal import connect_orthogonal as connect_orthogonal
from .orthogonal import orthogonal_path as orthogonal_path
from .tree import SpanningTree as SpanningTree
from .tree import connect_minima as connect_minima
from .tree import connect_nets as connect_nets
from .tree import connect_tree as connect_tree
from .tree import spanning_tree as spanning_tree
