"""The compiled CPU path's own machinery (``ssgan.kernels._inductor``): one compiled variant per
signature serving every size its shape guards admit, compilation under a dispatch mode, the
OpenMP loops whatever size compiled first, and Inductor's on-disk cache across processes."""
import os
import subprocess
import sys

import pytest
import torch

import ssgan.kernels as K
import ssgan.kernels._inductor as compiled_path
from ssgan.kernels._private_api import TorchDispatchMode
from ssgan.kernels import reference as ref
from helpers import randn

pytestmark = pytest.mark.compile


@pytest.fixture
def fresh_tables():
    """No compiled variants, so that a test sees its own compilations."""
    compiled_path.forget_compiled()
    with K.use_backend("inductor"):
        yield
    compiled_path.forget_compiled()


def _built_since(fn, before: int) -> int:
    return compiled_path.compilations(fn) - before


def test_one_variant_serves_every_size_and_a_new_layout_gets_its_own(fresh_tables):
    fn, before = ref.gan_logits_forward, compiled_path.compilations(ref.gan_logits_forward)
    for shape in [(8, 6), (50, 9), (3, 2), (8, 6)]:
        z = randn(*shape, scale=4.0)
        torch.testing.assert_close(K.gan_logits(z), ref.gan_logits(z))
    assert _built_since(fn, before) == 1  # a new size compiles nothing, a repeated one neither

    for z in (randn(9, 7).t(), randn(1, 5), randn(12, 20)[:, 3:14]):
        torch.testing.assert_close(K.gan_logits(z), ref.gan_logits(z))
    # transposed strides, a size-1 dim and a row stride unequal to the width each fail the
    # first variant's guards
    assert _built_since(fn, before) == 4


def test_the_channels_last_draw_compiles_only_where_positions_come_in_fours(fresh_tables):
    """A channels-last dropout with S % 4 == 0 draws in memory order, any other S in row-major
    order: the variant compiled for one never serves the other, in either order of arrival,
    and every mask equals the twin's on channels-first memory. (16+ channels: fewer run
    channels-first on this path.)"""
    before = compiled_path.compilations(ref.leaky_relu_dropout_forward)
    for spatial in [(4, 4), (7, 3), (2, 10), (5, 5), (4, 6), (3, 3)]:
        x = (randn(3, 17, *spatial).abs() + 0.1).contiguous(memory_format=torch.channels_last)
        y = K.leaky_relu_dropout(x, p=0.4, seed=99)
        twin = ref.leaky_relu_dropout(x.contiguous(), p=0.4, seed=99)
        assert torch.equal(y != 0, twin != 0), spatial
        torch.testing.assert_close(y, twin)
    assert _built_since(ref.leaky_relu_dropout_forward, before) == 2


def test_a_dispatch_mode_around_the_first_call_neither_breaks_nor_enters_compilation(
        fresh_tables):
    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    before = compiled_path.compilations(ref.leaky_relu_dropout_forward)
    x = randn(4, 6, 3, 5).requires_grad_()
    with Recorder() as recorder:
        y = K.leaky_relu_dropout(x, p=0.5, seed=11)
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    with Recorder() as twin_recorder:
        twin = ref.leaky_relu_dropout(x.detach(), p=0.5, seed=11)
    assert torch.equal(y.detach(), twin)
    torch.testing.assert_close(dx, torch.where(twin != 0, 2.0, 0.0) *
                               torch.where(x.detach() > 0, 1.0, 0.2))
    assert _built_since(ref.leaky_relu_dropout_forward, before) == 1
    # the mode saw the views around the compiled calls, not the ~200 ops of the twin's math
    # that tracing runs
    assert len(recorder.ops) < len(twin_recorder.ops) / 10, recorder.ops


@pytest.mark.multithreaded
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one thread: no parallel loops")
def test_a_graph_compiled_on_a_few_rows_keeps_its_parallel_loops(fresh_tables):
    """Inductor sizes its OpenMP regions by the sizes it compiles for; a graph compiled on 3
    rows and cached on disk would otherwise run a million rows on one thread."""
    z = randn(3, 11)
    K.gan_logits(z, extra_class=True)
    (variant,) = [v for key, variants in compiled_path._variants.items()
                  if key[0] is ref.gan_logits_forward for v in variants]
    with open(variant._run.__func__.__code__.co_filename) as generated:
        assert "#pragma omp parallel" in generated.read()


def test_a_second_process_takes_the_compiled_graphs_from_inductors_cache(tmp_path):
    code = """
import torch
import ssgan.kernels as K
from ssgan.kernels._private_api import inductor_counters
x = torch.randn(5, 7, 3, 3, requires_grad=True)
K.leaky_relu_dropout(x, p=0.5, seed=1).sum().backward()
K.gan_logits(torch.randn(6, 11, requires_grad=True), extra_class=True).sum().backward()
counters = inductor_counters()
print(counters["fxgraph_cache_hit"], counters["fxgraph_cache_miss"])
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SSGAN_KERNELS")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path)
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    (first_hits, first_misses), (hits, misses) = (
        map(int, run.stdout.split()) for run in runs)
    assert (first_hits, first_misses) == (0, 4)  # two ops, forward and backward each
    assert (hits, misses) == (4, 0)
