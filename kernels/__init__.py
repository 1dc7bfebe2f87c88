"""Fused Triton kernels for semi-supervised GAN training, with plain-PyTorch twins.

Public ops (see each docstring): :func:`leaky_relu_dropout`,
:func:`batch_norm_leaky_relu_dropout`, :func:`gan_loss_head`, :func:`feature_matching`,
:func:`gan_logits`, :func:`masked_cross_entropy`, and the optimizer step of a bf16 step,
:func:`mixed_precision_adam_`; :func:`backend_for` says which path a tensor takes;
:func:`deferred_target_checks` keeps the target-range check on the device in a training loop.
"""
from ._backend import BACKENDS, backend_for, requested_backend, set_backend, use_backend
from ._checks import dropout_seeds
from ._target_checks import DeferredTargetCheck, deferred_target_checks
from .batch_norm_leaky_relu_dropout import batch_norm_leaky_relu_dropout
from .feature_matching import feature_matching
from .gan_logits import gan_logits
from .gan_loss_head import gan_loss_head
from .leaky_relu_dropout import leaky_relu_dropout
from .masked_cross_entropy import masked_cross_entropy
from .mixed_precision_adam import mixed_precision_adam_
from . import reference

__all__ = ["BACKENDS", "DeferredTargetCheck", "backend_for", "batch_norm_leaky_relu_dropout",
           "deferred_target_checks", "dropout_seeds", "feature_matching", "gan_logits",
           "gan_loss_head", "leaky_relu_dropout", "masked_cross_entropy",
           "mixed_precision_adam_", "reference", "requested_backend", "set_backend",
           "use_backend"]
