from setuptools import setup

# torch, torchvision and triton are pinned to the exact releases the project is tested on: the
# CPU path calls private torch APIs (kernels/_private_api.py lists them), and CI checks GPU
# instruction budgets that move with the Triton compiler. Install torch first (see README): a
# local build of the same version (e.g. 2.14.1+cpu) satisfies the pin, so pip never swaps a CPU
# build for a multi-GB CUDA one behind the user's back.
setup(
    name="ssgan",
    version="0.1.0",
    description="Semi-supervised GAN training with fused Triton kernels",
    python_requires=">=3.10",
    packages=["ssgan", "ssgan.kernels"],
    package_dir={"ssgan": "ssgan", "ssgan.kernels": "kernels"},
    # the MNIST subset a bare `ssgan train` uses, with its source/license README
    package_data={"ssgan": ["bundled/mnist/*.gz", "bundled/mnist/README.md"]},
    # triton publishes Linux wheels only, and the CPU path never needs it (as torch's own
    # metadata does, the pin applies on Linux)
    install_requires=["torch==2.14.1", "torchvision==0.29.1",
                      'triton==3.8.0; platform_system == "Linux"', "numpy", "scipy", "tqdm",
                      "matplotlib", "pillow"],
    extras_require={"dev": ["pytest>=8", "pytest-xdist==3.8.0", "packaging"]},
    entry_points={"console_scripts": ["ssgan=ssgan.cli:main"]},
)
