#!/usr/bin/env bash
# Every GPU benchmark of isthmus in one run, printing one table (benchmarks/gpu_bench.py says what
# each row measures). Runs from the source tree with the python and torch it finds; no network.
#
#   benchmarks/gpu.sh                  # on a GPU machine (about 5 minutes on an H100/H200 class GPU)
#   benchmarks/gpu.sh --out gpu.json   # also write the rows as JSON
#   benchmarks/gpu.sh --dry-run        # CPU, tiny sizes: checks the script end to end (numbers mean nothing)
#   PYTHON=/path/to/python benchmarks/gpu.sh   # another interpreter (default: python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
export PYTHONPATH="$root/src:$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$here/gpu_bench.py" "$@"
