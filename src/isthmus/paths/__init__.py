"""Paths between parameter points: lines, chains, Bezier curves, AutoNEB, constructive paths."""

from .base import Path as Path
from .base import PathResult as PathResult
from .base import PiecewiseLinearPath as PiecewiseLinearPath
from .base import barrier as barrier
from .base import evaluate_path as evaluate_path
from .base import line as line
