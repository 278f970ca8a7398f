"""isthmus: connectivity of neural-network loss landscapes.

Provable paths from dropout/noise stability (Kuditipudi et al. 2019), the large-scale structure of
loss landscapes (Fort & Jastrzebski 2019), and the baselines around them (straight lines, Bezier and
polygonal-chain curves, AutoNEB, loss planes, permutation alignment, Hessian spectra).
"""

__version__ = "0.1.0"

from .errors import IsthmusError as IsthmusError  # noqa: E402
from .errors import IsthmusWarning as IsthmusWarning  # noqa: E402
