"""A one-off check, not a test: the other dtypes (fp64, fp16, bf16) of the three ops under
Inductor's AVX2 (256-bit) and scalar code, against the eager twins; output in isa_dtypes.txt.

    PYTHONPATH=. python bench/results/cpu-amd-epyc/uniform-before-stack/isa_dtypes.py
"""
import torch
torch.set_num_threads(2)
import torch._inductor.config as ic
import ssgan.kernels as K, ssgan.kernels._inductor as I
from ssgan.kernels import reference as R
torch.manual_seed(0)
for width in (256, 1):
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        for cl in (False, True):
            I._compiled = {}
            x = torch.randn(6, 19, 7, 9, dtype=dtype)
            if cl: x = x.contiguous(memory_format=torch.channels_last)
            s = (torch.rand(19) + 0.5).to(dtype); b = torch.randn(19).to(dtype)
            with ic.patch({"cpp.simdlen": width}), K.use_backend("inductor"):
                xs = x.clone().requires_grad_(); ss = s.clone().requires_grad_(); bs = b.clone().requires_grad_()
                y = K.leaky_relu_dropout(xs, p=0.5, seed=11, scale=ss, shift=bs)
                g = torch.autograd.grad(y, (xs, ss, bs), torch.ones_like(y))
            xt = x.clone().requires_grad_(); st = s.clone().requires_grad_(); bt = b.clone().requires_grad_()
            yt = R.leaky_relu_dropout(xt, p=0.5, seed=11, scale=st, shift=bt)
            gt = torch.autograd.grad(yt, (xt, st, bt), torch.ones_like(yt))
            ok = torch.equal(y != 0, yt != 0)
            err = max((a.double() - c.double()).abs().max().item() for a, c in zip((y,) + g, (yt,) + gt))
            print(width, dtype, "cl" if cl else "cf", "masks equal", ok, "kept", round((y != 0).float().mean().item(), 3), "max abs diff", round(err, 5))
    # heads
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        I._compiled = {}
        z = (torch.randn(37, 11) * 4).to(dtype); t = torch.randint(0, 11, (37,)); m = torch.rand(37) < 0.6
        with ic.patch({"cpp.simdlen": width}), K.use_backend("inductor"):
            a = K.masked_cross_entropy(z, t, m).double(); bgl = K.gan_logits(z, extra_class=True).double()
        print(width, dtype, "CE diff", (a - R.masked_cross_entropy(z, t, m).double()).abs().item(), "gan diff", (bgl - R.gan_logits(z, extra_class=True).double()).abs().max().item())
