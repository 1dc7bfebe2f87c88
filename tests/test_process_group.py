"""One owner of the process group: every module reads :func:`ssgan.distributed.current`, a
group of several ranks never acts as one process, and the statistics BatchNorm combines over
ranks stay exact when the mean dwarfs the spread."""
import pytest
import torch

from ssgan import distributed
from ssgan.distributed import Group, combine_statistics


def test_a_group_of_several_ranks_never_skips_its_collectives():
    two = Group(rank=0, world=2)
    t = torch.ones(3, requires_grad=True)
    for collective in (lambda: two.batch_mean(t), lambda: two.sum_across(t),
                       lambda: two.sum_(t.detach().clone()), lambda: two.average_([t.detach()]),
                       lambda: two.broadcast_object(1), lambda: two.gather(t)):
        with pytest.raises(RuntimeError, match="group of 2 ranks needs the process group"):
            collective()


def test_current_under_torchrun_before_join_is_an_error(monkeypatch):
    monkeypatch.setattr(distributed, "_joined_group", None)
    assert distributed.current() is distributed.ONE_PROCESS
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="rank 1 of 2.*join"):
        distributed.current()


def test_one_process_is_the_identity():
    one = distributed.ONE_PROCESS
    t = torch.randn(4, 3)
    assert one.shard(t) is t and one.sum_across(t) is t
    torch.testing.assert_close(one.batch_mean(t), t.mean(0))
    assert torch.equal(one.gather(t), t[None])
    assert one.labeled_share(t[:, 0] > 0) is None and one.gather_objects(5) == [5]


def _old_formula(parts: list[torch.Tensor]) -> torch.Tensor:
    """The previous synced BatchNorm variance: E[x^2] - E[x]^2 from summed moments."""
    n = sum(p.shape[0] for p in parts)
    total = sum(p.sum(0) for p in parts)
    squares = sum((p * p).sum(0) for p in parts)
    return (squares / n - (total / n) ** 2).clamp_min(0)


@pytest.mark.parametrize("mean", [0.0, 1e4])
def test_combined_statistics_match_fp64_where_the_old_formula_cancels(mean):
    sizes = [int(n) for n in torch.randint(1, 40, (4,))]
    parts = [mean + torch.randn(n, 6) * (1 + torch.rand(6)) for n in sizes]
    counts = torch.tensor(sizes, dtype=torch.float32)
    means = torch.stack([p.mean(0) for p in parts])
    centred = torch.stack([((p - p.mean(0)) ** 2).sum(0) for p in parts])
    n, mu, var = combine_statistics(counts, means, centred)
    whole = torch.cat(parts).double()
    assert n == sum(sizes)
    torch.testing.assert_close(mu.double(), whole.mean(0), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(var.double(), whole.var(0, unbiased=False), rtol=1e-3, atol=1e-4)
    old = _old_formula(parts).double()
    if mean:  # the negative control: the old formula misses by far more than the tolerance
        assert (old - whole.var(0, unbiased=False)).abs().max() > 0.1
