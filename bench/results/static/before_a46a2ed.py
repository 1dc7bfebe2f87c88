"""bench.gpu_static's per-specialization table for the kernels as of commit a46a2ed (one
Philox evaluation per element), from the notebook step and bench.kernels' launches."""
import os, sys, csv
os.environ["TRITON_INTERPRET"] = "1"
import torch
import ssgan.kernels as K
import ssgan.train as T
from ssgan.kernels import _checks
_checks.raise_bad_target = lambda *a: None  # a dry run leaves garbage in the range flag
from bench import gpu_static
from bench.gpu_compile import record_launches, compile_launches
from bench.train_step import synthetic_svhn
cfg = T.TrainConfig(batch_size=128, device="cpu", kernels="triton", progress=False, out_dir="/x")
T.memory_format = lambda device: torch.contiguous_format
trainer = T.Trainer(cfg, synthetic_svhn(1024))
with K.use_backend("triton"), record_launches(dry=True) as launches:
    trainer.step(torch.arange(128))
for l in launches:
    l["source"] = "model:notebook"
from bench import kernels as bk
bench = []
for dtype in bk.DTYPES.values():
    for case in bk.cases(dtype, torch.device("cpu"), smoke=False, compile_backend="eager"):
        if case.op != "leaky_relu_dropout":
            continue
        inputs = case.make()
        with K.use_backend("triton"), record_launches(dry=True) as rec:
            out = case.fns["ssgan"](*inputs)
            out.backward(torch.ones_like(out))
        bench += [{**l, "source": f"bench.kernels:{case.label}"} for l in rec]
results = [gpu_static.annotate(r) for r in compile_launches(launches + bench, archs=(90,), jobs=2)]
rows = [{**r, "flags": gpu_static.flags(r), "elements_per_program": gpu_static.elements_per_program(r)}
        for r in results if "error" not in r and r["op"].startswith("leaky")]
with open(sys.argv[1], "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=gpu_static.COLUMNS, extrasaction="ignore"); w.writeheader(); w.writerows(rows)
print(len(rows), "rows;", sum("error" in r for r in results), "errors")
