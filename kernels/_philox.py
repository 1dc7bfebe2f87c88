"""Triton's Philox-4x32-10 ``tl.rand`` re-implemented in plain PyTorch.

The reference twin and the CPU fallback must draw exactly the dropout mask the Triton kernels
draw for the same seed, so this mirrors ``triton.language.random.rand`` bit for bit: 32-bit
offsets, the seed split into two 32-bit key words, ten rounds, and Triton's int->float mapping.
uint32 values live in int64 tensors; products are split into 16-bit halves so nothing overflows.
"""
import torch

_MASK32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_INT_TO_UNIT = torch.tensor(4.6566127342e-10, dtype=torch.float32)


def _mul_hi_lo(const: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``const * x`` for uint32 ``x`` (held in int64)."""
    high_part = x * (const >> 16)          # < 2**48
    low_part = x * (const & 0xFFFF)        # < 2**48
    lo = (((high_part & 0xFFFF) << 16) + low_part) & _MASK32
    hi = (high_part + (low_part >> 16)) >> 16
    return hi, lo


def philox_uniform(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) float32 numbers, equal to ``tl.rand(seed, offsets)`` with int32 offsets.

    seed: int in [0, 2**63). offsets: integer tensor of values in [0, 2**31), any shape.
    Returns a float32 tensor of the same shape and device.
    """
    c0 = offsets.to(torch.int64) & _MASK32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    signed = torch.where(c0 >= 2**31, c0 - 2**32, c0)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * _INT_TO_UNIT.to(offsets.device)
