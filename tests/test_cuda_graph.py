"""The trainer's CUDA-graph capture (ssgan.cuda_graph). Capture needs a CUDA device; on a CPU the
same graph-ready step runs eagerly, and tests/test_train.py checks it bit for bit against the
ordinary step."""
import pytest
import torch

import ssgan.kernels as K
import ssgan.train as T
from ssgan.cuda_graph import WARMUP_STEPS, StepGraph
from test_train import IMPROVED_KNOBS, tiny_config, tiny_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs "
                                "a CUDA GPU; on this CPU the graph-ready step runs eagerly "
                                "(tests/test_train.py checks it against the ordinary step)")
CUDA = torch.device("cuda")


def draws(capture: bool, calls: int = WARMUP_STEPS + 3) -> tuple[StepGraph, list]:
    """Each call's draws from a registered generator and the default one (a dropout mask)."""
    gen = torch.Generator(CUDA).manual_seed(5)
    torch.manual_seed(7)
    x = torch.rand(16, 8, 4, 4, device=CUDA) + 0.5
    uniform, picks, dropped = (torch.empty(64, device=CUDA),
                               torch.empty(64, dtype=torch.int64, device=CUDA),
                               torch.empty_like(x))

    def step():
        uniform.copy_(torch.rand(64, device=CUDA, generator=gen))
        picks.copy_(torch.randint(0, 1000, (64,), device=CUDA, generator=gen))
        dropped.copy_(K.leaky_relu_dropout(x, p=0.5))
    run = StepGraph(step, CUDA, capture=capture, generators=[gen])
    seen = []
    for _ in range(calls):
        run()
        seen.append([t.clone() for t in (uniform, picks, dropped)])
    return run, seen


def test_every_replay_draws_new_numbers_the_same_as_eager_steps():
    graphed, seen = draws(capture=True)
    assert graphed.captured
    for before, after in zip(seen, seen[1:]):
        assert all(not torch.equal(a, b) for a, b in zip(before, after))
    eager, reference = draws(capture=False)
    assert not eager.captured
    for got, want in zip(seen, reference):
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_capture_that_fails_says_why_and_the_step_runs_eagerly(capsys):
    total = torch.zeros((), device=CUDA)

    def step():
        total.add_(1)
        float(total)  # a host read: no graph can hold it
    run = StepGraph(step, CUDA, capture=True)
    for _ in range(WARMUP_STEPS + 3):
        run()
    assert not run.captured and float(total) == WARMUP_STEPS + 3  # every call one step
    out = capsys.readouterr().out + capsys.readouterr().err
    assert out.count("could not be captured in a CUDA graph") == 1 and "--cuda-graph off" in out


def test_the_trainer_replays_its_step_and_trains_like_the_eager_step(tmp_path):
    knobs = {**IMPROVED_KNOBS, "batch_size": 8, "epochs": 2, "kernels": "triton",
             "device": "cuda"}
    data = tiny_dataset()
    graphed = T.Trainer(tiny_config(tmp_path / "graph", **knobs), data)
    graphed.fit()
    eager = T.Trainer(tiny_config(tmp_path / "eager", cuda_graph="off", **knobs), data)
    eager.fit()
    assert graphed.graph_step.captured and not eager.graph_step.captured
    # cuDNN's backward sums in no fixed order, so the runs agree to a tolerance, not bits
    for a, b in ((graphed.g, eager.g), (graphed.d, eager.d)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-3, msg=name)
    for row_a, row_b in zip(graphed.history, eager.history):
        assert row_a["d_loss"] == pytest.approx(row_b["d_loss"], rel=1e-3)
        assert row_a["lr"] == row_b["lr"]
    assert torch.equal(graphed.batch_rng.get_state(), eager.batch_rng.get_state())
