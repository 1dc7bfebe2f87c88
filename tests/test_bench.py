"""The benchmarks run in their tiny smoke mode on CPU and write their CSVs; without a GPU and
without --smoke they refuse to print CPU timings as results."""
import csv

import pytest
import torch

from bench import common, kernels, train_step


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_kernel_bench_smoke(tmp_path):
    assert kernels.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = read(tmp_path / "kernels.csv")
    ops = {r["op"] for r in rows}
    assert ops == {"leaky_relu_dropout", "gan_logits", "masked_cross_entropy"}
    assert {r["provider"] for r in rows} == set(kernels.PROVIDERS)
    assert {r["mode"] for r in rows} == set(kernels.MODES)
    assert all(r["note"] == common.NOT_A_MEASUREMENT and float(r["median_ms"]) > 0 for r in rows)
    assert all(r["torch"] == torch.__version__ and r["command"] for r in rows)
    assert list(tmp_path.glob("kernels_leaky_relu_dropout_*.png"))


def test_train_step_bench_smoke(tmp_path):
    assert train_step.main(["--smoke", "--out", str(tmp_path),
                            "--variants", "eager", "fused", "fused+cudagraph"]) == 0
    rows = {r["variant"]: r for r in read(tmp_path / "train_step.csv")}
    assert rows["eager"]["status"] == "ok" and float(rows["eager"]["gflop_per_step"]) > 0
    assert rows["fused"]["status"] == "ok"
    assert "need a CUDA device" in rows["fused+cudagraph"]["status"]
    assert all(r["note"] == common.NOT_A_MEASUREMENT for r in rows.values())
    assert (tmp_path / "train_step.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
@pytest.mark.parametrize("module", [kernels, train_step])
def test_without_gpu_and_without_smoke_refuses(module, tmp_path):
    with pytest.raises(SystemExit, match="GPU numbers need one.*--smoke"):
        module.main(["--out", str(tmp_path)])
