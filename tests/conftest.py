"""Chooses the Triton interpreter when there is no GPU. This must run before anything imports
ssgan.kernels, because Triton decides at decoration time whether kernels are interpreted."""
import json
import os
from pathlib import Path

import pytest

# xdist workers share the cores: each takes one thread, or their OpenMP pools oversubscribe
# the machine and every parallel loop waits on the other worker's
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS on purpose)

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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
# compiles for real GPUs exactly the specializations the tests ran, not a hand-kept list. Under
# xdist each worker sees only its own tests: with SSGAN_LAUNCH_LOG set (tests/full.sh), every
# session writes its launches there, and test_gpu_compile, run in a later session, reads them.
SESSION_LAUNCHES: list[dict] = []
LAUNCH_LOG = os.environ.get("SSGAN_LAUNCH_LOG")


@pytest.fixture(autouse=True, scope="session")
def _record_kernel_launches():
    from bench.gpu_compile import record_launches
    with record_launches(into=SESSION_LAUNCHES):
        yield
    if LAUNCH_LOG and SESSION_LAUNCHES:
        unique = {json.dumps(launch, sort_keys=True): launch for launch in SESSION_LAUNCHES}
        name = os.environ.get("PYTEST_XDIST_WORKER", "main") + f"-{os.getpid()}.json"
        Path(LAUNCH_LOG, name).write_text(json.dumps(list(unique.values())))


def recorded_launches() -> list[dict]:
    """This session's launches and those that earlier sessions wrote to SSGAN_LAUNCH_LOG."""
    logged = [launch for path in sorted(Path(LAUNCH_LOG).glob("*.json"))
              for launch in json.loads(path.read_text())] if LAUNCH_LOG else []
    return SESSION_LAUNCHES + logged


# The tiers: the default run deselects these (pytest.ini); tests/full.sh runs them all.
TIER_MARKERS = {
    "compile": "compiles kernels with Inductor (seconds each while the cache is cold)",
    "subprocess": "starts Python processes",
    "gpu_compile": "compiles every recorded Triton launch for sm_80/sm_90 (minutes)",
    "isa": "runs the CPU path under other vector widths than the machine's own",
    "training": "trains for several epochs",
    "multithreaded": "needs every core's thread (tests/full.sh runs it outside xdist)",
}


def pytest_configure(config):
    for name, what in TIER_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")
    config.addinivalue_line("markers", "after_all_tests: run after every other test (it "
                            "reads what the others recorded)")


def pytest_collection_modifyitems(session, config, items):
    """Tests that run on the Inductor path join the compile tier; after_all_tests go last."""
    for item in items:
        params = getattr(item, "callspec", None)
        if params and "inductor" in [str(v) for v in params.params.values()]:
            item.add_marker(pytest.mark.compile)
    items.sort(key=lambda item: item.get_closest_marker("after_all_tests") is not None)
