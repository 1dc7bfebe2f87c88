import os
import subprocess
import sys
import textwrap

import pytest

from ssgan.cpu_memory import keep_freed_memory

# Mimics a training step's memory: each call keeps one 8 MiB activation alive for a while and
# frees a 16 MiB and an 8 MiB temporary; counts the minor page faults of the later calls.
CHURN = textwrap.dedent("""
    import resource, sys, torch
    from ssgan.cpu_memory import keep_freed_memory
    if sys.argv[1] == "kept":
        assert keep_freed_memory()
    def layer():
        temporary, kept, scratch = (torch.ones(n) for n in (4 * 2**20, 2 * 2**20, 2 * 2**20))
        return kept
    live = [layer() for _ in range(6)]
    for _ in range(20):  # past the warm-up: the same pattern, again and again
        live = live[1:] + [layer()]
    for _ in range(5):  # five windows of 6 calls: the heap's layout drifts between windows
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(6):
            live = live[1:] + [layer()]
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


# glibc's initial thresholds (128 KiB), held fixed: left alone, glibc raises its mmap threshold
# to the size of each mmapped chunk freed, so whether a run faults depends on its history
GLIBC_INITIAL = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _faults(mode: str) -> list[int]:
    """Minor page faults of each window of 6 calls, in a fresh process; ``default`` holds
    glibc's initial thresholds, ``kept`` starts from them too and applies keep_freed_memory."""
    env = {**os.environ, **GLIBC_INITIAL}
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                         check=True, env=env)
    return [int(n) for n in out.stdout.split()]


@pytest.mark.subprocess
@pytest.mark.skipif(not keep_freed_memory(), reason="needs Linux with glibc")
def test_kept_memory_is_reused_without_page_faults():
    # a window touches 6 x 32 MiB = 49,152 pages. glibc's initial thresholds fault them all
    # again in every window; the kept settings none, or on one thread now and then one 8 or
    # 16 MiB block when the heap grows past fragmentation (seen on an Intel Xeon machine)
    default, kept = _faults("default"), _faults("kept")
    assert min(default) > 40_000, default
    assert sum(kept) < sum(default) / 20, (kept, default)
