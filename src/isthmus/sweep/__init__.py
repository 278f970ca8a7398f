"""Sweeps: many train / connect / stability / hessian jobs from one TOML spec, run by a local
process pool or as Ray tasks on a cluster, resumable job by job (docs/sweeps.md).

* `spec`: the schema, its checks and the expansion into jobs (`load_spec`, `plan`);
* `jobs`: one job in a worker process (`run_job`), its folder and its record;
* `run`:  the driver (`run_sweep`): skipping, retrying, scheduling, the table and the figure.
"""

from .jobs import run_job as run_job
from .run import BACKENDS as BACKENDS
from .run import SweepResult as SweepResult
from .run import run_sweep as run_sweep
from .spec import SweepSpec as SweepSpec
from .spec import load_spec as load_spec
from .spec import plan as plan
