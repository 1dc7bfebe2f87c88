"""Chooses the Triton interpreter when there is no GPU. This must run before anything imports
ssgan.kernels, because Triton decides at decoration time whether kernels are interpreted."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ssgan.kernels as K  # noqa: E402  (after TRITON_INTERPRET on purpose)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL_PATH = "triton" if (DEVICE.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1") \
    else "interpret"


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(params=["kernel", "inductor", "torch"])
def backend(request, monkeypatch) -> str:
    """Runs a test on the Triton path, on the Inductor-compiled twins and on the eager PyTorch
    twins; yields the path name the test must see from ``backend_for`` so that a silent
    fallback cannot pass."""
    if request.param in ("inductor", "torch"):
        monkeypatch.setenv("SSGAN_KERNELS", request.param)
        return request.param
    monkeypatch.setenv("SSGAN_KERNELS", "triton")
    return KERNEL_PATH


@pytest.fixture(autouse=True)
def _fresh_backend_override():
    K.set_backend(None)
    yield
    K.set_backend(None)


# Every Triton launch of the session is recorded, so that test_gpu_compile (ordered last)
# compiles for real GPUs exactly the specializations the tests ran, not a hand-kept list.
SESSION_LAUNCHES: list[dict] = []


@pytest.fixture(autouse=True, scope="session")
def _record_kernel_launches():
    from bench.gpu_compile import record_launches
    with record_launches(into=SESSION_LAUNCHES):
        yield


def pytest_configure(config):
    config.addinivalue_line("markers", "after_all_tests: run after every other test (it "
                            "reads what the others recorded)")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.get_closest_marker("after_all_tests") is not None)
