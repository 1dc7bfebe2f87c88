"""The benchmarks run in their tiny smoke mode and write their CSVs, tables and plots."""
import csv
import dataclasses
import time

import pytest
import torch

from bench import common, host_profile, kernels, train_step
from ssgan.devices import DevicePolicy, policy


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.compile
def test_kernel_bench_smoke(tmp_path):
    assert kernels.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = read(tmp_path / "kernels.csv")
    ops = {r["op"] for r in rows}
    assert ops == {"leaky_relu_dropout", "batch_norm_leaky_relu_dropout", "gan_loss_head",
                   "feature_matching", "gan_logits", "masked_cross_entropy"}  # every op
    assert {r["provider"] for r in rows} == set(kernels.PROVIDERS)
    assert {r["mode"] for r in rows} == set(kernels.MODES)
    assert all(r["note"] == common.NOT_A_MEASUREMENT and float(r["median_ms"]) > 0 for r in rows)
    assert all(r["torch"] == torch.__version__ and r["command"] for r in rows)
    ssgan = [r for r in rows if r["provider"] == "ssgan"]
    assert all(float(r["speedup_vs_stock"]) > 0 and float(r["speedup_vs_stock+compile"]) > 0
               for r in ssgan)
    assert "| vs stock |" in (tmp_path / "kernels.md").read_text()
    blocks = [r for r in ssgan if r["op"] == "leaky_relu_dropout" and r["shape_from"] != "sweep"]
    assert {r["layout"] for r in blocks} == {"channels_first", "channels_last"}
    assert "| layout |" in (tmp_path / "kernels.md").read_text()
    assert list(tmp_path.glob("kernels_leaky_relu_dropout_*.png"))


def test_cpu_timing_interleaves_the_providers_in_blocks():
    """Every round runs each function for its own block of calls, so a slow spell of the
    machine falls on all of them; a slower function gets fewer calls per block, and grads are
    reset before every call."""
    log, leaf = [], torch.ones(1, requires_grad=True)

    def fast():
        assert leaf.grad is None
        leaf.grad = torch.ones(1)
        log.append("fast")

    def slow():
        log.append("slow")
        time.sleep(0.004)

    times = common.interleaved_cpu_times_ms({"fast": fast, "slow": slow}, min_rounds=3,
                                            block_s=0.02, grad_to_none={"fast": [leaf]})
    timed = log[6:]  # two warm-up rounds and one calibration call each
    runs = [name for i, name in enumerate(timed) if i == 0 or timed[i - 1] != name]
    assert runs == ["fast", "slow"] * 3
    assert len(times["slow"]) == timed.count("slow") and 3 <= len(times["slow"]) <= 15
    assert len(times["fast"]) == timed.count("fast") > 5 * len(times["slow"])
    assert min(times["slow"]) >= 4.0


@pytest.mark.compile
def test_train_step_bench_smoke(tmp_path):
    assert train_step.main(["--smoke", "--out", str(tmp_path), "--variants", "ssgan", "stock",
                            "reference", "ssgan+cudagraph"]) == 0
    rows = {r["variant"]: r for r in read(tmp_path / "train_step.csv")}
    for variant in ("ssgan", "stock", "reference"):
        assert rows[variant]["status"] == "ok", rows[variant]["status"]
        assert float(rows[variant]["gflop_per_step"]) > 0
        assert float(rows[variant]["warmup_s"]) > 0 and float(rows[variant]["peak_mem_mb"]) > 0
    assert float(rows["stock"]["speedup_vs_stock"]) == 1.0
    assert "need a CUDA device" in rows["ssgan+cudagraph"]["status"]
    assert all(r["note"] == common.NOT_A_MEASUREMENT for r in rows.values())
    assert (tmp_path / "train_step.png").exists()
    assert "| vs stock |" in (tmp_path / "train_step.md").read_text()


def test_a_variants_tags_set_the_decisions_they_name():
    """Each tag in a variant's name sets its DevicePolicy fields for that variant's step, over
    the device's own decisions: ssgan+aten-conv-grads is the CPU step with the convolution
    gradients left to ATen, ssgan+multi-pass+cudagraph the GPU step one pass per segment."""
    fields = {field.name for field in dataclasses.fields(DevicePolicy)}
    assert all(set(changes) <= fields for changes in train_step.DECISIONS.values())
    with train_step.decisions("ssgan+aten-conv-grads", torch.device("cpu")):
        assert not policy("cpu").rewritten_conv_grads
        assert not policy("cpu").one_pass_discriminator  # the CPU's own
    assert policy("cpu").rewritten_conv_grads
    with train_step.decisions("ssgan+multi-pass+cudagraph", torch.device("cuda")):
        assert not policy("cuda").one_pass_discriminator
        assert policy("cuda").cuda_graph  # the GPU's own


@pytest.mark.compile
def test_a_graphed_variant_whose_capture_fails_is_reported_not_timed(monkeypatch):
    """A +cudagraph variant whose step StepGraph could not capture runs eagerly: its row says
    so instead of timing the eager step under the graph's name (here: a CPU, where nothing
    is captured, with the GPU-only guard lifted)."""
    monkeypatch.setattr(train_step, "GPU_ONLY", ())
    row = train_step.prepare("ssgan+cudagraph", 8, True, torch.device("cpu"))
    assert row["status"].startswith("failed: the step could not be captured")
    assert train_step.prepare("ssgan", 8, True, torch.device("cpu"))["status"] == "ok"


@pytest.mark.compile
def test_compiled_stock_step_runs_at_a_second_batch_size(tmp_path):
    """The second batch size recompiles, and AOTAutograd's donated buffers then refuse the
    simultaneous update's retain_graph (seen on an H100 at batch 512, and here)."""
    assert train_step.main(["--smoke", "--out", str(tmp_path), "--variants", "stock+compile",
                            "--batches", "8", "16"]) == 0
    rows = read(tmp_path / "train_step.csv")
    assert [(r["batch"], r["status"]) for r in rows] == [("8", "ok"), ("16", "ok")]


def test_stock_step_trains_the_same_model_shape():
    """The baseline must be the same model: equal parameter counts for D and G."""
    from bench import stock
    trainer = train_step.make_trainer("stock", 8, True, torch.device("cpu"))
    g, d = stock.stock_models(trainer)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(g) == count(trainer.g) and count(d) == count(trainer.d)
    losses = stock.stock_step(trainer, g, d, torch.arange(8))
    assert torch.isfinite(losses["d_loss"]) and torch.isfinite(losses["g_loss"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.parametrize("module", [kernels, train_step, host_profile])
def test_cuda_without_a_gpu_is_a_clear_error(module, tmp_path):
    with pytest.raises(SystemExit, match="no CUDA GPU is visible; use --device cpu"):
        module.main(["--device", "cuda", "--out", str(tmp_path)])


@pytest.mark.compile
def test_host_profile_writes_a_table_per_variant(tmp_path):
    # stock+channels_last for a name with a '+' in it: stock+compile would spend its time
    # compiling
    assert host_profile.main(["--device", "cpu", "--variants", "ssgan", "stock+channels_last",
                              "--smoke", "--batch", "8", "--steps", "1", "--onednn",
                              "--out", str(tmp_path)]) == 0
    ssgan = (tmp_path / "ssgan.txt").read_text()
    assert ssgan.startswith("# ssgan, notebook step, batch 8, 1 steps on cpu")
    assert "Self CPU" in ssgan and "aten::convolution" in ssgan
    assert "stock+channels_last" in (tmp_path / "stock_channels_last.txt").read_text()
    # oneDNN's timing of the step's primitives: D's convolutions, forward and both backwards
    rows = read(tmp_path / "ssgan_onednn.csv")
    kinds = {(r["primitive"], r["propagation"]) for r in rows}
    assert {("convolution", p) for p in ("forward_training", "backward_data",
                                         "backward_weights")} <= kinds
    # a tiny primitive of the smoke model can time 0 at oneDNN's clock resolution
    assert all(float(r["ms_per_step"]) >= 0 and float(r["calls_per_step"]) >= 1 for r in rows)
    assert sum(float(r["ms_per_step"]) for r in rows) > 0
    assert all(r["note"] == common.NOT_A_MEASUREMENT for r in rows)
    assert sum(float(r["ms_per_step"]) for r in rows) < 2 * float(rows[0]["step_ms"])
    assert "oneDNN's primitives report" in (tmp_path / "ssgan_onednn.md").read_text()


def test_onednn_timing_is_refused_off_the_cpu(tmp_path):
    with pytest.raises(SystemExit, match="use it with --device cpu"):
        host_profile.main(["--device", "cuda", "--onednn", "--out", str(tmp_path)])


def test_seeds_report_gives_mean_and_spread(tmp_path):
    from bench import seeds_report
    runs = []
    for group, finals in (("a", (0.90, 0.92)), ("b", (0.95, 0.97))):
        for seed, final in enumerate(finals):
            run = tmp_path / "runs" / f"{group}-s{seed}"
            (run / "samples").mkdir(parents=True)
            with open(run / "metrics.csv", "w") as f:
                f.write(f"epoch,test_accuracy\n1,0.5\n2,{final}\n")
            for name in ("config.json", "accuracy.png", "samples/epoch_002.png"):
                (run / name).write_text("{}")
            runs.append(str(run))
    assert seeds_report.main([*runs, "--out", str(tmp_path / "out")]) == 0
    rows = {r["group"]: r for r in read(tmp_path / "out" / "seeds.csv")}
    assert float(rows["a"]["mean"]) == pytest.approx(0.91)
    assert float(rows["b"]["std"]) == pytest.approx(0.01414, abs=1e-4)
    assert (tmp_path / "out" / "seeds.png").exists()
    assert (tmp_path / "out" / "a-s1" / "epoch_002.png").exists()


def test_the_device_readme_is_regenerated_from_the_tables_and_keeps_its_notes(tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    device = tmp_path / "bench" / "results" / "cpu-test"
    run = device / "train-step" / "run1"
    run.mkdir(parents=True)
    common.write_csv([{"variant": "ssgan", "device": "Test CPU", "threads": 2, "torch": "9.9",
                       "command": "train_step.py --device cpu"}], run / "train_step.csv")
    (run / "train_step.md").write_text("| variant |\n| --- |\n| ssgan |\n")
    (device / "README.md").write_text("# My notes\n\nkept\n")
    for _ in range(2):  # regenerating replaces the tables, never the notes
        readme = common.write_readme(run).read_text()
    assert readme.startswith("# My notes\n\nkept\n") and readme.count(common.README_MARKER) == 1
    assert "### `train-step/run1/train_step.md`" in readme and "| ssgan |" in readme
    assert "device Test CPU, threads 2, torch 9.9; command: `train_step.py --device cpu`" in readme
