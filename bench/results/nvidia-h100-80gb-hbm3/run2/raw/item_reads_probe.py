"""The throwaway pytest file that produced item-reads-stacks.txt and inductor-guards-excerpt.txt
on the lent H100 (torch 2.11). Run from tests/ (it imports test_train's helpers), with
TORCH_LOGS=recompiles,guards for the second test."""
import collections
import traceback

import torch
import torch._dynamo.utils as du

import ssgan.kernels as K
import ssgan.train as T
from test_train import IMPROVED_KNOBS, tiny_config, tiny_dataset


def _trainer(tmp_path):
    return T.Trainer(tiny_config(tmp_path, kernels="inductor", device="cpu", **IMPROVED_KNOBS),
                     tiny_dataset())


def test_where_the_reads_come_from(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    idx = torch.arange(trainer.cfg.batch_size)
    with K.use_backend("inductor"):
        trainer.step(idx)
        stacks = collections.Counter()
        original = torch.Tensor.item

        def counted(self, *a, **k):
            stacks["".join(traceback.format_stack(limit=7)[:-1])] += 1
            return original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, "item", counted)
        trainer.step(idx)
        monkeypatch.undo()
    for s, n in stacks.most_common(4):
        print("=====", n, "\n", s)
    print("TOTAL", sum(stacks.values()))


def test_recompiles(tmp_path):
    trainer = _trainer(tmp_path)
    idx = torch.arange(trainer.cfg.batch_size)
    with K.use_backend("inductor"):
        trainer.step(idx)
        before = dict(du.counters["stats"])
        for _ in range(3):
            trainer.step(idx)
        print("STATS before", before, "after", dict(du.counters["stats"]))
