"""ssgan: semi-supervised GAN training in PyTorch with fused Triton kernels.

``ssgan.load_classifier(path)`` gives a trained run's classifier (ssgan.classifier)."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # lazily: ``import ssgan.kernels`` should not import the trainer's modules
    if name == "load_classifier":
        from ssgan.classifier import load_classifier
        return load_classifier
    raise AttributeError(f"module 'ssgan' has no attribute {name!r}")
