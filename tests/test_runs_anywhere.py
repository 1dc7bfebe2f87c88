"""ssgan installs and runs where PyTorch does: without triton (macOS, Windows), without a C++
compiler, and on a torch whose private APIs differ from the pinned one's. Each case runs the
commands a newcomer runs, in a fresh process, and checks what they print."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--d-size-mult", "4", "--g-size-mult", "4", "--z-dim", "8",
        "--device", "cpu", "--no-progress", "--eval-every", "1"]

# the commands of the README's quickstart, in one process, after ``PRELUDE``
SCRIPT = """
import json, sys
{prelude}
from ssgan import cli
out = sys.argv[1]
codes = [cli.main(["train", *json.loads(sys.argv[2]), "--out-dir", out, "--name", "run"]),
         cli.main(["eval", out + "/run", "--device", "cpu"]),
         cli.main(["predict", out + "/run", out + "/digits", "--out", out + "/p.csv",
                   "--device", "cpu", "--no-progress"]),
         cli.main(["export", out + "/run", "--out", out + "/c.pt2"])]
import ssgan.kernels as K, torch
print("CODES", json.dumps(codes), "BACKEND", K.backend_for(torch.zeros(1)))
"""

CASES = {
    # sys.modules[name] = None makes ``import name`` fail as if it were not installed
    "no-triton": ("import sys; sys.modules['triton'] = None", {}, "inductor", None),
    "no-compiler": ("", {"CXX": "/nonexistent/g++"}, "torch", "no working C++ compiler"),
    "private-api-missing": ("import sys; sys.modules['torch._inductor.compile_fx'] = None", {},
                            "torch", "kernels/_private_api.py"),
    # another torch release, whose compile_fx_inner takes other arguments
    "private-api-changed": ("import torch._inductor.compile_fx as c\n"
                            "c.compile_fx_inner = lambda graph: None\n"
                            "import ssgan.kernels._private_api as p; p.PINNED_TORCH = '0.0'",
                            {}, "torch", "kernels/_private_api.py"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_quickstart_runs(case, tmp_path):
    prelude, env_extra, backend, warning = CASES[case]
    digits = tmp_path / "digits"
    digits.mkdir()
    for i in range(3):
        Image.new("L", (28, 28), color=40 * i).save(digits / f"{i}.png")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SSGAN_KERNELS")}
    env.update(OMP_NUM_THREADS="1", **env_extra)
    if warning:  # no cached kernel may hide a failure to compile
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor-cache")
    run = subprocess.run([sys.executable, "-c", SCRIPT.format(prelude=prelude),
                          str(tmp_path), json.dumps(TINY)], env=env, capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert f'CODES [0, 0, 0, 0] BACKEND {backend}' in run.stdout, output[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "c.pt2").is_file() and (tmp_path / "p.csv").is_file()
    assert "No CUDA runtime" not in output and "triton not found" not in output, output
    assert "Traceback" not in output, output
    notices = [line for line in output.splitlines() if "ssgan.kernels:" in line]
    if warning:
        assert len(notices) == 1 and warning in notices[0], notices
    else:
        assert notices == [], notices


def test_the_wheel_pins_triton_on_linux_only(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob("ssgan-*.whl")
    import zipfile
    from packaging.requirements import Requirement
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith("METADATA"))).decode()
    requires = [Requirement(line.split(":", 1)[1].strip())
                for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    triton, = [r for r in requires if r.name == "triton"]
    assert str(triton.specifier) == "==3.8.0"
    for system, wanted in (("Linux", True), ("Darwin", False), ("Windows", False)):
        assert triton.marker.evaluate({"platform_system": system}) is wanted, system
    torch_req, = [r for r in requires if r.name == "torch"]
    assert torch_req.marker is None and str(torch_req.specifier) == "==2.14.1"
