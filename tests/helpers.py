"""Shared test helpers: dtype-aware tolerances and fresh random data."""
import pytest
import torch
from torch import nn

from ssgan import precision

# --precision bf16 on a CPU without native bf16 is refused (test_precision checks the refusal),
# so the tests that train in bf16 on the CPU skip there
needs_native_bf16_cpu = pytest.mark.skipif(
    precision.missing_bf16_support(torch.device("cpu")) is not None,
    reason="this CPU has no native bf16 (AVX512-BF16, AMX or Arm BF16), and ssgan refuses "
    "--precision bf16 on it")

LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)
TOLERANCES = {
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}


def assert_close_to_truth(actual: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype,
                          scale: float = 1.0) -> None:
    """``actual`` (computed in ``dtype``) against an fp64 ``truth``; ``scale`` widens atol for
    quantities accumulated over many elements."""
    tol = dict(TOLERANCES[dtype])
    tol["atol"] *= scale
    torch.testing.assert_close(actual.double(), truth.double(), **tol)


def randn(*shape, dtype=torch.float32, device="cpu", scale=1.0) -> torch.Tensor:
    return (torch.randn(*shape, dtype=torch.float64, device=device) * scale).to(dtype)


def away_from_zero(t: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Pushes values off the leaky-ReLU kink so finite differences do not straddle it."""
    return t + torch.where(t >= 0, margin, -margin).to(t.dtype)


def inductor_diagonal(backend: str, case: int, dtype: int, dtypes: int,
                      cases: int | None = None) -> None:
    """Skips all but a diagonal of a (case x dtype) grid on the Inductor path, which compiles
    a graph for every dtype, layout and set of segments it meets (seconds each while
    Inductor's cache is cold, as in CI): it runs case ``case`` (an index, below ``cases``
    where given) in the dtype of index ``case % dtypes`` only, so every case and every dtype
    runs; the kernel path runs the whole grid."""
    if backend == "inductor" and (case % dtypes != dtype or (cases is not None
                                                             and case >= cases)):
        pytest.skip("the Inductor path runs each case in one dtype (helpers.inductor_diagonal)")


class LayerCall(nn.Module):
    """``run(layer, x)`` as a module, so that gradcheck can feed the layer's weight and bias
    through ``torch.func.functional_call``."""

    def __init__(self, run, layer: nn.Module):
        super().__init__()
        self.run, self.layer = run, layer

    def forward(self, x):
        return self.run(self.layer, x)


def gradcheck_layer_call(run, layer: nn.Module, x: torch.Tensor) -> bool:
    """fp64 gradcheck of ``run(layer, x)`` in x and the layer's weight and bias."""
    wrapped = LayerCall(run, layer)
    w, b = (p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias))
    return torch.autograd.gradcheck(lambda x, w, b: torch.func.functional_call(
        wrapped, {"layer.weight": w, "layer.bias": b}, (x,)), (x, w, b))
