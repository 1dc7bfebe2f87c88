"""Every Triton kernel specialization compiles for A100 (sm_80) and H100 (sm_90) without
spills, and the dropout kernels meet their instruction budget: checked on this CPU with the
compiler and cuobjdump that ship in the triton wheel (bench.gpu_compile)."""
import os

import pytest

from bench import gpu_static
from bench.gpu_compile import compile_launches
from conftest import LAUNCH_LOG, recorded_launches

pytestmark = [pytest.mark.gpu_compile, pytest.mark.skipif(
    bool(os.environ.get("PYTEST_XDIST_WORKER")) and not LAUNCH_LOG,
    reason="under xdist a worker sees only its own tests' launches: run the gpu_compile tier "
    "in a session of its own after the others, with SSGAN_LAUNCH_LOG (tests/full.sh does)")]

# a forward moves 2 elements' bytes, a backward 3: within these per-element instruction counts
# an H100 stays memory-bound in fp32 (bench.gpu_static models it)
DROPOUT_BUDGET = {"leaky_relu_dropout.forward": 40, "leaky_relu_dropout.backward": 50}
MAX_DROPOUT_REGISTERS = 128


# the kernels whose SASS the budget below reads; every other specialization is checked for
# compile errors, registers and spills, which cuobjdump reports without a disassembly
BUDGETED_KERNELS = "ssgan.kernels._triton_leaky_relu_dropout:"


def _sm90_sass_if_budgeted(launch: dict) -> dict:
    return {**launch, "disassemble": [90] if launch["kernel"].startswith(BUDGETED_KERNELS)
            else False}


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    """The model's launches (the notebook and improved steps at batch 128, the notebook's
    in bf16 too), bench.kernels' launches in fp32/bf16/fp16, and every launch the tests before
    this one made (in this session, or logged by earlier ones), compiled for both archs.
    Launches that differ only in a float constant (slope, p) share one compile: the same
    instructions with other immediates; so do the tests' launches that differ only in their
    arguments' alignment. Only the budgeted kernels at the model's shapes are disassembled, for
    sm_90 where the budget applies: that keeps this test within a couple of minutes
    (``python -m bench.gpu_static`` disassembles everything for its report)."""
    launches = [_sm90_sass_if_budgeted(launch) for launch in (
        gpu_static.model_step_launches("notebook")
        + gpu_static.model_step_launches("improved")
        + gpu_static.model_step_launches("notebook", precision="bf16")
        + gpu_static.bench_kernel_launches())]
    launches += [{**launch, "source": "tests", "disassemble": False, "any_alignment": True}
                 for launch in recorded_launches()]
    return [gpu_static.annotate(r) for r in compile_launches(launches, jobs=2, structural=True)]


@pytest.mark.after_all_tests
def test_every_specialization_compiles_for_sm80_and_sm90_without_spills(compiled):
    assert {r["arch"] for r in compiled} == {"sm_80", "sm_90"}
    sources = {s.split(":")[0] for r in compiled for s in r["sources"]}
    assert {"model", "bench.kernels"} <= sources
    # a test's launch that stands for every alignment joins the model's compile of its
    # specialization instead of compiling again
    assert any({"model", "tests"} <= {s.split(":")[0] for s in r["sources"]} for r in compiled)
    errors = [f"{r['kernel']} {r['arch']} {r['constexprs']}: {r['error']}"
              for r in compiled if "error" in r]
    assert not errors, "\n".join(errors)
    spills = [(r["op"], r["arch"], gpu_static.flags(r), r["local_bytes"])
              for r in compiled if r["local_bytes"]]
    assert not spills


@pytest.mark.after_all_tests
def test_dropout_kernels_meet_the_instruction_budget_at_the_model_shapes(compiled):
    """The elementwise dropout kernels (leaky_relu_dropout's, and the batch-norm block's, which
    tile alike) draw one Philox per four elements; leaky_relu_dropout's stay within budget.
    The batch-norm block's reduction draws one per element (its loop walks a segment's
    positions, not tiles of four): bench.gpu_static reports its count."""
    at_model_shapes = [
        r for r in compiled if r["arch"] == "sm_90" and r["constexprs"].get("HAS_DROPOUT")
        and "SHARED_PHILOX" in r["constexprs"]
        and any(s.startswith("model:") or s.split(":")[-1][:2] in ("D.", "G.")
                for s in r["sources"])]
    assert {r["dtype"] for r in at_model_shapes} >= {"fp32", "bf16"}
    assert {r["op"] for r in at_model_shapes} >= {*DROPOUT_BUDGET,
                                                 "batch_norm_leaky_relu_dropout.forward"}
    for r in at_model_shapes:
        where = (r["op"], r["dtype"], gpu_static.flags(r), r["sources"])
        assert r["constexprs"]["SHARED_PHILOX"], where  # one Philox per four elements
        assert r["registers"] <= MAX_DROPOUT_REGISTERS, (where, r["registers"])
        if r["op"] in DROPOUT_BUDGET:
            assert r["instructions_per_element"] <= DROPOUT_BUDGET[r["op"]], \
                (where, r["instructions_per_element"])
