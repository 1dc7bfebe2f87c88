#!/usr/bin/env bash
# The whole suite, every tier, as CI runs it: all but the GPU compile on two workers, then, in a
# session of its own, the GPU compile of every Triton launch those tests recorded. Extra
# arguments go to both pytest calls.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
export SSGAN_LAUNCH_LOG=$log
python -m pytest -q -m "not gpu_compile" -n 2 --durations=15 "$@"
python -m pytest -q -m gpu_compile --durations=5 "$@"
