"""The fixed cost of a folded-BN block (affine, leaky ReLU, no dropout), forward+backward, on
ssgan's CPU path and in stock PyTorch: at 2x128x1x1 the work is nil and what remains is the
calls; at 128x128x4x4 (D.act4/5, G.act0) it is next to the work. Medians of 7 repeats of 2000
calls. Run: python floor.py (2 threads)."""
import statistics
import time

import torch
import torch.nn.functional as F

import ssgan.kernels as K

torch.set_num_threads(2)


def per_call_us(fn, calls: int = 2000, repeats: int = 7) -> float:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; fwd+bwd, us")
    for shape in [(2, 128, 1, 1), (128, 128, 4, 4)]:
        x = torch.randn(*shape, requires_grad=True)
        scale = (torch.rand(128) + 0.5).requires_grad_()
        shift = torch.randn(128, requires_grad=True)
        dy = torch.randn(*shape)

        def clear():
            x.grad = scale.grad = shift.grad = None

        def ssgan():
            K.leaky_relu_dropout(x, p=0.0, scale=scale, shift=shift).backward(dy)
            clear()

        def stock():
            F.leaky_relu(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), 0.2).backward(dy)
            clear()
        print(f"{'x'.join(map(str, shape)):>12s}  ssgan {per_call_us(ssgan):6.1f}  "
              f"stock {per_call_us(stock):6.1f}")


if __name__ == "__main__":
    main()
