"""A PROTOTYPE, NOT SHIPPED: a hand-written C++ leaky-ReLU + dropout, forward and backward, for the
discriminator's 128x64x16x16 channels-last block (fp32, no affine, p = 0.5), against the
Inductor-compiled twins that ssgan's CPU path runs. It measures what the Inductor formulation
leaves on the table; the issue asks for the twins compiled by Inductor, so this is not used.

Why it is faster: the element (n, c, s) draws word s % 4 of Philox at counter
((n*C + c)*S + s) // 4, and in channels-last memory the channels of one position are adjacent.
The kernel computes one Philox per 4 positions for 16 channels at once (32-bit lanes, one
widening multiply per product) and writes those 4 positions directly; Inductor instead stores
the words in counter order and gathers them per element. Masks and gradients are checked
bit-equal to the compiled twins below.

Needs a C++ compiler and ninja (torch.utils.cpp_extension.load_inline, about 30 s once).

    OMP_NUM_THREADS=2 PYTHONPATH=. python bench/results/cpu-amd-epyc/cpp-dropout-prototype/proto.py
"""
import time, statistics, torch
from torch.utils.cpp_extension import load_inline
from ssgan.kernels import reference as ref
torch.set_num_threads(2)
src = r'''
#include <torch/extension.h>
#include <cstdint>
static inline float unif(uint32_t w) {
  int32_t s = (int32_t)w;
  if (s < 0) s = -s - 1;
  return (float)s * 4.6566127342e-10f;
}
template <bool BWD>
torch::Tensor run(torch::Tensor x, torch::Tensor dy, int64_t seed, double slope_d, double p_d) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C), S4 = S / 4;
  auto y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* gp = BWD ? dy.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const uint32_t k0 = (uint32_t)(seed & 0xFFFFFFFF), k1 = (uint32_t)((uint64_t)seed >> 32);
  const float slope = (float)slope_d, p = (float)p_d, scale = (float)(1.0 / (1.0 - p_d));
  #pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N * S4; ++r) {  // one (image, group of 4 positions) per iteration
    {
      const int64_t n = r / S4, s4 = r % S4;
      const int64_t base = (n * S + 4 * s4) * C;
      for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const int L = (int)std::min<int64_t>(16, C - c0);
        uint32_t w0[16], w1[16], w2[16], w3[16];
        #pragma GCC ivdep
        for (int l = 0; l < 16; ++l) {
          w0[l] = (uint32_t)((n * C + c0 + l) * S4 + s4); w1[l] = 0; w2[l] = 0; w3[l] = 0;
        }
        uint32_t kk0 = k0, kk1 = k1;
        #pragma GCC unroll 10
        for (int rr = 0; rr < 10; ++rr) {
          #pragma GCC ivdep
          for (int l = 0; l < 16; ++l) {
            uint64_t pb = (uint64_t)0xCD9E8D57u * w2[l];
            uint64_t pa = (uint64_t)0xD2511F53u * w0[l];
            uint32_t n0 = (uint32_t)(pb >> 32) ^ w1[l] ^ kk0;
            uint32_t n2 = (uint32_t)(pa >> 32) ^ w3[l] ^ kk1;
            w1[l] = (uint32_t)pb; w3[l] = (uint32_t)pa; w0[l] = n0; w2[l] = n2;
          }
          kk0 += 0x9E3779B9u; kk1 += 0xBB67AE85u;
        }
        const uint32_t* ws[4] = {w0, w1, w2, w3};
        for (int k = 0; k < 4; ++k) {
          const uint32_t* wk = ws[k];
          const int64_t off = base + k * C + c0;
          #pragma GCC ivdep
          for (int l = 0; l < L; ++l) {
            const float v = xp[off + l];
            const float a = BWD ? (v > 0 ? gp[off + l] : gp[off + l] * slope) : (v > 0 ? v : v * slope);
            yp[off + l] = unif(wk[l]) > p ? a * scale : 0.0f;
          }
        }
      }
    }
  }
  return y;
}
torch::Tensor fwd(torch::Tensor x, int64_t seed, double slope, double p) { return run<false>(x, x, seed, slope, p); }
torch::Tensor bwd(torch::Tensor dy, torch::Tensor x, int64_t seed, double slope, double p) { return run<true>(x, dy, seed, slope, p); }
'''
mod = load_inline("ssgan_cl_dropout_prototype_v2", cpp_sources=src, functions=["fwd", "bwd"],
                  extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


def main():
    N, C, H, W = 128, 64, 16, 16; S = H * W
    seed_v = 1234567; seed = torch.tensor([seed_v], dtype=torch.int64); p, slope = 0.5, 0.2
    x = torch.randn(N, C, H, W).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(N, C, H, W).contiguous(memory_format=torch.channels_last)
    cur_f = torch.compile(ref.leaky_relu_dropout_forward, dynamic=True)
    cur_b = torch.compile(ref.leaky_relu_dropout_backward, dynamic=True)
    xs, dys = x.view(N, C, S), dy.view(N, C, S)
    def med(fn, n=40):
        for _ in range(5): fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e3
    with torch.no_grad():
        print("fwd bit-equal", torch.equal(mod.fwd(x, seed_v, slope, p), cur_f(xs, None, None, seed, slope, p).view(N, C, H, W)))
        print("bwd bit-equal", torch.equal(mod.bwd(dy, x, seed_v, slope, p), cur_b(dys, xs, None, None, seed, slope, p, False)[0].view(N, C, H, W)))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of 40 runs, ms")
        for r in range(3):
            print("C++ fwd %.3f  inductor fwd %.3f  C++ bwd %.3f  inductor bwd %.3f ms" % (
                med(lambda: mod.fwd(x, seed_v, slope, p)), med(lambda: cur_f(xs, None, None, seed, slope, p)),
                med(lambda: mod.bwd(dy, x, seed_v, slope, p)), med(lambda: cur_b(dys, xs, None, None, seed, slope, p, False))), flush=True)


if __name__ == "__main__":
    main()
