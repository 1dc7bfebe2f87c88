#!/usr/bin/env bash
# One lease on a lent GPU, in as few device calls as possible (the device time is rationed):
#   bash bench/gpu_session.sh test [FILE...]  environment, install, the test suite on CUDA (or
#                                    the named test files: the whole suite needs more than one
#                                    10-minute call there; pass tests/test_a.py ... to split it)
#   bash bench/gpu_session.sh bench   bench.kernels (fp32) and bench.train_step on CUDA
#   bash bench/gpu_session.sh profile where the eager step's host time goes (bench.host_profile)
#   bash bench/gpu_session.sh diagnose  each step variant alone, memcheck, the kernel tests
#   bash bench/gpu_session.sh graph   the CUDA-graph check in one call: bench.train_step at batch
#                                    128 and 512 with every variant, the CUDA-graph and trainer
#                                    tests, and a timed 3-epoch ssgan train with and without
#                                    --cuda-graph (each part under its own timeout, 9 minutes in all)
# Everything lands under $OUT (default /tmp/gpu-out); results are packed into one tarball,
# because the device tool returns at most eight files.
set -uo pipefail
stage=${1:?usage: gpu_session.sh test|bench|profile|diagnose|graph}
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, \
torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"
  nproc
} 2>&1 | tee "$out/env-$stage.txt"
# the image's torch is used as it is and nothing can be fetched there, so instead of pip the
# package is laid out as setup.py installs it (kernels/ becomes ssgan.kernels) on PYTHONPATH;
# Python runs from outside the checkout so that ./ssgan does not shadow it
repo=$PWD; site=/tmp/ssgan-site; rm -rf "$site"; mkdir -p "$site"
cp -r ssgan "$site/ssgan"; cp -r kernels "$site/ssgan/kernels"
export PYTHONPATH=$site:$repo
cd /tmp

case $stage in
  test)
    # -v so that a run cut off by the time limit still names every test that failed;
    # --dist load, because with loadfile test_train.py ran serially on one worker and the
    # second lease's whole-suite run was cut off at 82%
    targets=("${@:2}"); targets=("${targets[@]/#/$repo/}")
    [ ${#targets[@]} -gt 0 ] || targets=("$repo/tests")
    timeout 540 python3 -m pytest "${targets[@]}" -m "" -v --tb=short -c "$repo/pytest.ini" \
      --rootdir "$repo" -n 14 --dist load -p no:cacheprovider \
      > "$out/pytest-cuda.txt" 2>&1
    echo "pytest exit $?"; grep -E "FAILED|ERROR|passed|failed" "$out/pytest-cuda.txt" | tail -40
    ;;
  bench)
    res=$out/results; mkdir -p "$res"
    timeout 250 python3 -m bench.kernels --device cuda --out "$res/kernels-fp32" \
      > "$out/bench-kernels.txt" 2>&1; echo "bench.kernels exit $?"
    timeout 250 python3 -m bench.train_step --device cuda --out "$res/train-step" \
      > "$out/bench-train-step.txt" 2>&1; echo "bench.train_step exit $?"
    tail -15 "$out/bench-kernels.txt"; tail -15 "$out/bench-train-step.txt"
    tar -czf "$out/gpu-results.tar.gz" -C "$res" .
    ;;
  graph)
    res=$out/results; mkdir -p "$res"
    timeout 240 python3 -m bench.train_step --device cuda --batches 128 512 \
      --out "$res/train-step" > "$out/bench-train-step.txt" 2>&1
    echo "bench.train_step exit $?"; tail -20 "$out/bench-train-step.txt"
    timeout 120 python3 -m pytest "$repo/tests/test_cuda_graph.py" "$repo/tests/test_train.py" \
      -m "" -v --tb=short -c "$repo/pytest.ini" --rootdir "$repo" -n 8 -p no:cacheprovider \
      > "$out/pytest-cuda-graph.txt" 2>&1
    echo "pytest exit $?"; grep -E "FAILED|ERROR|passed|failed" "$out/pytest-cuda-graph.txt" | tail
    for mode in auto off; do
      /usr/bin/time -f "wall %e s" timeout 100 python3 -m ssgan train --epochs 3 --no-progress \
        --cuda-graph $mode --out-dir "$res/train-3-epochs" --name "cuda-graph-$mode" \
        > "$out/train-cuda-graph-$mode.txt" 2>&1
      echo "ssgan train --cuda-graph $mode exit $?"; tail -3 "$out/train-cuda-graph-$mode.txt"
    done
    rm -f "$res"/train-3-epochs/*/checkpoints/*.pt
    tar -czf "$out/gpu-results.tar.gz" -C "$res" .
    ;;
  profile)
    timeout 300 python3 -m bench.host_profile --device cuda --out "$out/profile" \
      --variants ssgan stock ssgan+cudagraph 2>&1 | tail -5
    ;;
  diagnose)
    # each variant alone, launches synchronous, so that a device-side assert names its op
    for b in 512 128; do for v in ssgan reference ssgan+cudagraph stock stock+compile; do
      CUDA_LAUNCH_BLOCKING=1 timeout 60 python3 -m bench.gpu_step_check 10 $b "$v" \
        > "$out/check-$b-$v.txt" 2>&1; grep -v Assertion "$out/check-$b-$v.txt" | tail -2
    done; done
    # memcheck sees out-of-bounds accesses only outside the caching allocator's slabs
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 compute-sanitizer --tool memcheck \
      --print-limit 20 python3 -m bench.gpu_step_check 2 512 ssgan > "$out/memcheck.txt" 2>&1
    echo "memcheck exit $?"; grep -E "Invalid|ERROR SUMMARY|at 0x|by thread|Address" \
      "$out/memcheck.txt" | head -20
    timeout 100 python3 -m pytest "$repo/tests/test_masked_cross_entropy.py" \
      "$repo/tests/test_backend_and_compile.py" -m "" -q --tb=short -c "$repo/pytest.ini" \
      --rootdir "$repo" -n 14 -p no:cacheprovider > "$out/pytest-fixed.txt" 2>&1
    echo "pytest exit $?"; grep -E "FAILED|ERROR|passed|failed" "$out/pytest-fixed.txt" | tail
    ;;
esac
