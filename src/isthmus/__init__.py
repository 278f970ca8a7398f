"""isthmus: connectivity of neural-network loss landscapes.

Provable paths from dropout/noise stability (Kuditipudi et al. 2019), and the baselines around
them (straight lines, Bezier and polygonal-chain curves, AutoNEB, loss planes, permutation
alignment). The public API is re-exported here; submodules hold the details.
"""

__version__ = "0.1.0"

from .align import align as align  # noqa: E402
from .data import Dataset as Dataset  # noqa: E402
from .data import load as load  # noqa: E402
from .errors import IsthmusError as IsthmusError  # noqa: E402
from .errors import IsthmusWarning as IsthmusWarning  # noqa: E402
from .io import load_run as load_run  # noqa: E402
from .io import save_run as save_run  # noqa: E402
from .landscape import Landscape as Landscape  # noqa: E402
from .models import ModelConfig as ModelConfig  # noqa: E402
from .models import Units as Units  # noqa: E402
from .models import build_model as build_model  # noqa: E402
from .params import evaluate as evaluate  # noqa: E402
from .params import params_of as params_of  # noqa: E402
from .stability import dropout_stability as dropout_stability  # noqa: E402
from .stability import noise_stability as noise_stability  # noqa: E402
from .train import TrainConfig as TrainConfig  # noqa: E402
from .train import train as train  # noqa: E402
from .train import train_population as train_population  # noqa: E402
