from setuptools import setup

# torch is deliberately a range that any installed build satisfies: install torch first
# (see README) so pip never swaps a CPU build for a multi-GB CUDA one.
setup(
    name="ssgan",
    version="0.1.0",
    description="Semi-supervised GAN training with fused Triton kernels",
    python_requires=">=3.10",
    packages=["ssgan", "ssgan.kernels"],
    package_dir={"ssgan": "ssgan", "ssgan.kernels": "kernels"},
    install_requires=["torch>=2.4", "triton>=3.0", "numpy", "scipy", "tqdm", "matplotlib",
                      "pillow"],
    extras_require={"dev": ["pytest"]},
    entry_points={"console_scripts": ["ssgan=ssgan.cli:main"]},
)
