"""bench.gpu_static counts a GPU's training step on this CPU, with the GPU's decisions: the
fused step may launch no more kernels than the stock step (CI fails otherwise)."""
import pytest

from bench import gpu_static
from ssgan import devices
from ssgan.kernels._backend import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="records Triton launches in the "
                                "interpreter, on CPU tensors (this CPU-only check)")


def test_the_fused_step_launches_no_more_kernels_than_stock():
    rows = {r["path"]: r for r in gpu_static.step_traffic()}
    fused, stock = rows["fused (ssgan)"], rows["stock PyTorch"]
    assert fused["triton_launches"] > 0 and stock["triton_launches"] == 0
    assert fused["launches"] <= stock["launches"], (fused, stock)


def test_the_recorded_model_step_takes_the_gpus_branches(monkeypatch):
    """The GPU runs its feature maps channels-first; under the CPU's decisions the same
    recording would launch channels-last kernels, which this must see."""
    def channels_last_launches():
        return [launch for launch in gpu_static.model_step_launches("notebook", batch=16)
                if launch["kwargs"].get("CHANNELS_LAST") == ["bool", True]]
    assert channels_last_launches() == []
    monkeypatch.setitem(devices.POLICIES, "cuda", devices.POLICIES["cpu"])  # a CPU's branches
    assert channels_last_launches()
