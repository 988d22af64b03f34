#!/usr/bin/env bash
# The prepared GPU check (sparse_perception_ros/runtime/gpu_check.py via cli/gpu_check.py; bench/RESULTS.md says how to
# run it on a lent GPU machine and what it prints). Needs only Python with torch (>= 2.11) and
# triton: no install, no ROS, no network. Writes gpu_check.json and gpu_check.md to $OUT (or --out).
#
#   scripts/gpu_check.sh                 # on a GPU machine: about 5-7 minutes, budget 420 s
#   scripts/gpu_check.sh --cpu-smoke     # the same code paths on the CPU at a small size (the test suite)
#
# Environment: PYTHON (default: the repo's .venv if present, else python3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
exec "$PY" -m sparse_perception_ros.cli.gpu_check "$@"
