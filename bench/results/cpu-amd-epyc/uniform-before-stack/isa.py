"""Keep rate and mask equality of the compiled dropout (p = 0.5, fp32, 64x64x16x16
channels-last) under each vector width Inductor can emit on this CPU, with the Philox-to-uniform
step as shipped before and as shipped now (see ab.py), against the eager twin.

    PYTHONPATH=. python bench/results/cpu-amd-epyc/uniform-before-stack/isa.py
"""
import torch
import torch._inductor.config as inductor_config

from ssgan.kernels import _philox as P, reference as R

from ab import before_uniform, with_uniform  # noqa: E402  (the same two variants)


def main():
    torch.set_num_threads(2)
    x = torch.randn(64, 256, 64).transpose(1, 2)
    seed = torch.tensor([7])
    with torch.no_grad():
        twin = R.leaky_relu_dropout_forward(x, None, None, seed, 0.2, 0.5)
        print(f"eager twin: {(twin != 0).float().mean():.4f} kept")
        for width in (512, 256, 1):
            for name, uniform in (("before", before_uniform), ("now", P.dropout_uniform)):
                with inductor_config.patch({"cpp.simdlen": width}):
                    y = with_uniform(R.leaky_relu_dropout_forward, uniform)(
                        x, None, None, seed, 0.2, 0.5)
                label = "scalar" if width == 1 else f"{width}-bit"
                print(f"{label:8s} {name:7s} {(y != 0).float().mean():.4f} kept, "
                      f"mask equal to the twin's: {torch.equal(y != 0, twin != 0)}")


if __name__ == "__main__":
    main()
