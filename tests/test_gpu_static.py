"""bench.gpu_static counts a GPU's training step on this CPU, with the GPU's decisions: the
fused step of each recipe may launch at most MAX_LAUNCH_SHARE of its stock step's kernels, and
its bf16 step at most BF16_EXTRA_LAUNCHES more than its fp32 step (CI fails otherwise)."""
import pytest

from bench import gpu_static
from ssgan import devices
from ssgan.kernels._backend import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="records Triton launches in the "
                                "interpreter, on CPU tensors (this CPU-only check)")


def test_the_fused_step_launches_at_most_a_share_of_stocks():
    rows = {(r["recipe"], r["path"]): r for r in gpu_static.step_traffic()}
    for recipe in gpu_static.RECIPES:
        fused, stock = rows[recipe, "fused (ssgan)"], rows[recipe, "stock PyTorch"]
        assert fused["triton_launches"] > 0 and stock["triton_launches"] == 0
        assert fused["launches"] <= gpu_static.MAX_LAUNCH_SHARE * stock["launches"], \
            (recipe, fused, stock)
        bf16 = rows[recipe, "fused (ssgan) bf16"]
        assert bf16["launches"] <= fused["launches"] + gpu_static.BF16_EXTRA_LAUNCHES, \
            (recipe, bf16, fused)


def test_the_recorded_model_step_takes_the_gpus_branches(monkeypatch):
    """The GPU runs its fp32 feature maps channels-first and D in one pass over its segments;
    under the CPU's decisions the same recording launches channels-last kernels and a batch
    norm per segment, which this must see."""
    def kinds():
        launches = gpu_static.model_step_launches("notebook", batch=16)
        ops = {gpu_static.kernel_kind({"kernel": launch["kernel"]}) for launch in launches}
        segments = {launch["kwargs"]["num_segments"][1] for launch in launches
                    if "num_segments" in launch["kwargs"]}
        return ({launch["kwargs"].get("CHANNELS_LAST") == ["bool", True] for launch in launches},
                ops, segments)
    layouts, ops, segments = kinds()
    assert layouts == {False} and segments == {1, 2}   # G's batch norms, and D's over 2
    assert {"batch_norm_leaky_relu_dropout.statistics", "gan_loss_head.forward"} <= ops
    monkeypatch.setitem(devices.POLICIES, "cuda", devices.POLICIES["cpu"])  # a CPU's branches
    layouts, ops, segments = kinds()
    assert True in layouts and segments == {1}
