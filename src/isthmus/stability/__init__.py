"""Dropout and noise stability of ReLU nets (Kuditipudi et al. 2019, section 3; docs/stability.md).

* `versions`: the dropout versions theta_i (kept sets, factors r, their parameters);
* `dropout`:  the search for kept sets (`dropout_stability`) and the keep-rate curve;
* `noise`:    the noise-stability quantities (`noise_stability`);
* `results`:  the result types `DropoutStability` / `NoiseStability` and stability.json.
"""

from .dropout import DropoutLosses as DropoutLosses
from .dropout import dropout_loss_curve as dropout_loss_curve
from .dropout import dropout_stability as dropout_stability
from .noise import jacobian_frobenius_sq as jacobian_frobenius_sq
from .noise import noise_response as noise_response
from .noise import noise_stability as noise_stability
from .results import STABILITY_FILE as STABILITY_FILE
from .results import DropoutChoice as DropoutChoice
from .results import DropoutStability as DropoutStability
from .results import NoiseStability as NoiseStability
from .results import StabilityResult as StabilityResult
from .results import load_stability as load_stability
from .results import save_stability as save_stability
from .versions import KeptSets as KeptSets
from .versions import default_r as default_r
from .versions import dropout_params as dropout_params
from .versions import outgoing_norms as outgoing_norms
from .versions import scaled_r as scaled_r
from .versions import validate_kept as validate_kept
