#!/usr/bin/env bash
# The whole suite, every tier, as CI runs it: all but the GPU compile on two workers (one thread
# each), then, in a session of its own, the GPU compile of every Triton launch those tests
# recorded and the tests that need every thread. Extra arguments go to both pytest calls.
# Work stealing: a worker that runs out of tests takes some of the other's, so the long
# subprocess tests do not leave one worker idle at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
export SSGAN_LAUNCH_LOG=$log
python -m pytest -q -m "not (gpu_compile or multithreaded)" -n 2 --dist worksteal --durations=15 "$@"
python -m pytest -q -m "gpu_compile or multithreaded" --durations=5 "$@"
