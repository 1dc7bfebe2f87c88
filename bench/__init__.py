"""Benchmarks of the fused kernels and of the whole training step (``python -m bench.kernels``,
``python -m bench.train_step``)."""
