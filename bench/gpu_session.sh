#!/usr/bin/env bash
# One lease on a lent GPU, in as few device calls as possible (the device time is rationed):
#   bash bench/gpu_session.sh test [FILE...]  environment, install, the test suite on CUDA (or
#                                    the named test files: the whole suite needs more than one
#                                    10-minute call there; pass tests/test_a.py ... to split it)
#   bash bench/gpu_session.sh bench   bench.kernels (fp32) and bench.train_step on CUDA
#   bash bench/gpu_session.sh profile where the eager step's host time goes (bench.host_profile)
#   bash bench/gpu_session.sh diagnose  each step variant alone, memcheck, the kernel tests
#   bash bench/gpu_session.sh graph   the graphed step in one call: bench.train_step at batch 128
#                                    and 512, fp32 and bf16, against every stock variant and with
#                                    each GPU decision flipped; then the CUDA tests of the one-pass
#                                    step, the fused ops and the graphs (9 minutes in all)
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
    # the training step as `ssgan train` runs it on a GPU (from one CUDA graph) against every
    # stock variant, with each of the GPU's decisions flipped, in fp32 and in bf16; then the
    # CUDA tests of the one-pass step, the fused ops and the graphs. Results are packed after
    # each part, so that a part cut off by its timeout leaves the earlier ones.
    res=/tmp/gpu-res; rm -rf "$res"; mkdir -p "$res"
    timeout 230 python3 -m bench.train_step --device cuda --batches 128 512 --variants \
      ssgan+cudagraph ssgan ssgan+multi-pass+cudagraph ssgan+aten-bn+cudagraph \
      ssgan+channels-last+cudagraph ssgan+subpixel+cudagraph stock stock+compile \
      stock+reduce-overhead stock+cudagraph --out "$res/train-step" \
      > "$out/bench-train-step.txt" 2>&1
    echo "bench.train_step fp32 exit $?"; tar -czf "$out/gpu-results.tar.gz" -C "$res" .
    timeout 190 python3 -m bench.train_step --device cuda --batches 128 512 --precision bf16 \
      --variants ssgan+bf16+cudagraph ssgan+bf16 ssgan+bf16+channels-first+cudagraph \
      ssgan+cudagraph stock stock+bf16 stock+bf16+compile stock+bf16+reduce-overhead \
      stock+bf16+cudagraph --out "$res/train-step-bf16" > "$out/bench-train-step-bf16.txt" 2>&1
    echo "bench.train_step bf16 exit $?"; tar -czf "$out/gpu-results.tar.gz" -C "$res" .
    grep -h "^{" "$out"/bench-train-step*.txt | cut -c1-150
    files=(test_cuda_graph.py test_one_pass.py test_precision.py test_gan_loss_head.py
           test_batch_norm_leaky_relu_dropout.py test_feature_matching.py test_autocast.py)
    timeout 110 python3 -m pytest "${files[@]/#/$repo/tests/}" -m "" -v --tb=short \
      -c "$repo/pytest.ini" -o pythonpath="$site $repo" --rootdir "$repo" -n 14 --dist load \
      -p no:cacheprovider > "$out/pytest-cuda.txt" 2>&1
    echo "pytest exit $?"; grep -E "FAILED|ERROR|passed|failed" "$out/pytest-cuda.txt" | tail -30
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
