"""The wheel carries the bundled MNIST subset, and an installed copy trains on it offline."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ["ssgan/bundled/mnist/" + name for name in (
    "train-5k-images-idx3-ubyte.gz", "train-5k-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "README.md")]


@pytest.mark.subprocess
def test_wheel_contains_the_bundled_data_and_loads_it_when_installed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path / "dist"), str(ROOT)], check=True,
                   capture_output=True)
    wheel, = (tmp_path / "dist").glob("ssgan-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert set(BUNDLED) <= names and "ssgan/kernels/__init__.py" in names
        for name in BUNDLED:
            assert zf.read(name) == (ROOT / name).read_bytes()
        zf.extractall(tmp_path / "site")
    # the unpacked wheel, not the source tree, answers the import
    code = ("import ssgan.data as D; ds = D.load_mnist(); "
            "assert str(D.BUNDLED_MNIST).startswith(sys.argv[1]), D.BUNDLED_MNIST; "
            "print(len(ds.train), len(ds.test))")
    out = subprocess.run([sys.executable, "-c", "import sys; " + code, str(tmp_path / "site")],
                         check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["5000", "10000"]
