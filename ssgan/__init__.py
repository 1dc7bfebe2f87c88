"""ssgan: semi-supervised GAN training in PyTorch with fused Triton kernels."""
__version__ = "0.1.0"
