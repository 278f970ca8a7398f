"""isthmus: connectivity of neural-network loss landscapes.

Provable paths from dropout and noise stability (Kuditipudi et al. 2019), the large-scale structure
of loss landscapes (Fort & Jastrzebski 2019: the wedge model, curvature), and the baselines around
them (straight lines, Bezier and polygonal-chain curves, AutoNEB, loss planes, permutation
alignment). The public API is re-exported here; submodules hold the details (docs/README.md).
"""

from .align import align as align
from .data import Dataset as Dataset
from .data import load as load
from .errors import IsthmusError as IsthmusError
from .errors import IsthmusWarning as IsthmusWarning
from .io import load_run as load_run
from .io import save_run as save_run
from .landscape import Landscape as Landscape
from .models import ModelConfig as ModelConfig
from .models import Units as Units
from .models import build_model as build_model
from .params import evaluate as evaluate
from .params import params_of as params_of
from .stability import DropoutStability as DropoutStability
from .stability import NoiseStability as NoiseStability
from .stability import dropout_stability as dropout_stability
from .stability import load_stability as load_stability
from .stability import noise_stability as noise_stability
from .train import TrainConfig as TrainConfig
from .train import train as train
from .train import train_population as train_population
from .version import __version__ as __version__
