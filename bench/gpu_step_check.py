"""Runs a few training steps of each named bench.train_step variant on the GPU and checks that
they finish without a device error: alone, with CUDA_LAUNCH_BLOCKING=1 or under
compute-sanitizer, a failing kernel is named (bench/gpu_session.sh diagnose). Prints one line
per variant; exits 1 if any failed.

usage: python -m bench.gpu_step_check STEPS BATCH VARIANT [VARIANT ...]"""
import sys

import torch

from bench.train_step import step_fn


def main(variants: list[str], steps: int, batch: int) -> int:
    failed = 0
    for variant in variants:
        try:
            run = step_fn(variant, batch, False, torch.device("cuda"))
            for _ in range(steps):
                run()
            torch.cuda.synchronize()
            print(f"{variant}: ok, {steps} steps at batch {batch}", flush=True)
        except Exception as err:  # report every variant, then fail
            failed += 1
            print(f"{variant}: FAILED {type(err).__name__}: {str(err).splitlines()[0]}",
                  flush=True)
            if "device-side assert" in str(err):
                break  # the context is gone; later variants cannot run in this process
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[3:], int(sys.argv[1]), int(sys.argv[2])))
