"""Triton's Philox-4x32-10 re-implemented in plain PyTorch, bit for bit.

The reference twin and the CPU path must draw exactly the dropout numbers the Triton kernels
draw for a seed. Element i uses word ``i % 4`` of ``tl.randint4x(seed, i // 4)``, mapped to
[0, 1) by ``tl.uint_to_uniform_float``: one Philox evaluation serves four elements. uint32
values live in int64 tensors. The seed stays a device tensor throughout, so no value is read
back to the host and Inductor compiles the whole draw into one fused loop.
"""
import math

import torch

_MASK32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_INT_TO_UNIT = 4.6566127342e-10  # Triton's scale from int31 to [0, 1), applied in fp32


def _mul_hi_lo(const: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``const * x`` for uint32 ``const`` and ``x`` (held in int64).

    The 64-bit product can pass 2**63: it wraps to a negative int64 with the same bits (ATen's
    kernels and Inductor's generated code multiply modulo 2**64), and the masks read the two
    halves back. One multiply, where splitting into 16-bit halves to avoid the wrap takes two
    and slows the compiled CPU Philox loop down.
    """
    product = x * const
    return (product >> 32) & _MASK32, product & _MASK32


def philox4x(seed: torch.Tensor, counters: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four uint32 words (as int64, each shaped like ``counters``) of
    ``tl.randint4x(seed, counters)``; seed: one-element int64 tensor in [0, 2**63), counters:
    integer tensor of values below 2**32."""
    c0 = counters.to(torch.int64) & _MASK32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    key = seed.reshape(()).to(device=counters.device, dtype=torch.int64)
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint_to_uniform(words: torch.Tensor) -> torch.Tensor:
    """``tl.uint_to_uniform_float`` for uint32 words held in int64: float32 in [0, 1).

    Triton reads a word as int32 x (``.to(int32)`` wraps the same way) and maps x < 0 to
    -x - 1, which is ``x ^ (x >> 31)``. No ``torch.where`` on int64: Inductor's AVX2 code picks
    int64 values through a compare mask the wrong way round (torch 2.14.1), which made every
    CPU without AVX-512 keep all units (``tests/test_vector_isa.py``).
    """
    x = words.to(torch.int32)
    return (x ^ (x >> 31)).to(torch.float32) * _INT_TO_UNIT


def dropout_uniform(seed: torch.Tensor, numel: int, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32 numbers for logical indices 0..numel-1, as the kernels draw them;
    seed: one-element int64 tensor.

    Each word becomes a float before the four are interleaved: the compiled CPU loop then
    keeps 4-byte floats between its Philox pass and its elementwise pass instead of 8-byte
    words.
    """
    counters = torch.arange((numel + 3) // 4, device=device)
    uniforms = [uint_to_uniform(word) for word in philox4x(seed, counters)]
    return torch.stack(uniforms, dim=-1).reshape(-1)[:numel]


def dropout_uniform_channels_last(seed: torch.Tensor, shape: torch.Size,
                                  device: torch.device) -> torch.Tensor:
    """The numbers of :func:`dropout_uniform` for ``shape`` (N, C, ...), in a channels-last
    tensor; needs the positions per channel, S, to be a multiple of 4.

    Element (n, c, s) has logical index i = n*C*S + c*S + s, so it takes word s % 4 of the
    counter (n*C*S + c*S) // 4 + s // 4: the four positions of a quad share one Philox
    evaluation, and along the channels, the fastest dim here, the counters step by S/4. The
    draw runs over rows m = n*(S/4) + s//4 of that channel vector, one flat row index, which
    lets Inductor evaluate Philox once per counter in the same loop that interleaves the words
    into memory order. Built in the row-major order instead, the compiled channels-last loop
    reads the numbers through transposed tiles, far slower than the channels-first draw.
    """
    n, c = shape[0], shape[1]
    quads = math.prod(shape[2:]) // 4
    rows = torch.arange(n * quads, device=device).view(-1, 1)
    counters = ((rows // quads) * (c * quads) + rows % quads
                + torch.arange(c, device=device).view(1, -1) * quads)     # (N*S/4, C)
    uniforms = [uint_to_uniform(word) for word in philox4x(seed, counters)]
    # (N*S/4, 4, C) is (N, S, C) in memory: (N, *spatial, C) viewed back as (N, C, *spatial)
    return torch.stack(uniforms, dim=1).view(n, *shape[2:], c).movedim(-1, 1)
