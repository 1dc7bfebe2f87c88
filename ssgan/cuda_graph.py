"""Replaying a training step from one CUDA graph.

A step whose tensors all outlive it (parameters, optimizer state, fixed input and output
buffers), that reads nothing back to the host and draws its randomness on the device from
generators registered with the graph, can be captured once and then replayed as one launch:
eager PyTorch pays the host's cost of every kernel of the step, a replay pays it once. Every
replay draws new numbers, because a registered generator's offset advances with each replay.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ssgan.errors import describe

CUDA_GRAPH_MODES = ("auto", "off")
WARMUP_STEPS = 3  # eager steps before capture: Triton autotuning, allocator, optimizer state


class StepGraph:
    """Runs ``step`` (no arguments; its result is dropped) once per call: eagerly, or, when
    ``capture`` is true on a CUDA device, as :data:`WARMUP_STEPS` eager steps on a side stream
    and then replays of one graph captured from the next call.

    Every call is one real step, warm-up and capture included (a capture records without
    running, so the capturing call replays once). ``generators`` are the step's own device
    generators; the default generator is registered by PyTorch. A capture that fails prints
    one line saying why and the step runs eagerly from then on, so a run never stops for it.
    """

    def __init__(self, step: Callable[[], object], device: torch.device, *, capture: bool,
                 generators: Sequence[torch.Generator] = ()):
        self.step = step
        self.capture = capture and device.type == "cuda"
        self.generators = list(generators)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._warmed = 0
        self._stream = torch.cuda.Stream(device) if self.capture else None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif not self.capture:
            self.step()
        elif self._warmed < WARMUP_STEPS:
            self._on_side_stream()
            self._warmed += 1
        else:
            self._capture()

    def _on_side_stream(self) -> None:
        # warm-up off the default stream, as capture requires of the allocator's first uses
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            self.step()
        torch.cuda.current_stream().wait_stream(self._stream)

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            for generator in self.generators:
                graph.register_generator_state(generator)
            with torch.cuda.graph(graph, stream=self._stream):
                self.step()
        except Exception as err:  # any failure to capture: train on, eagerly
            self.capture = False
            tqdm.write(f"ssgan: the training step could not be captured in a CUDA graph "
                       f"({describe(err)}); it runs eagerly (--cuda-graph off skips the "
                       "attempt)")
            torch.cuda.synchronize()
            self.step()
            return
        self.graph = graph
        graph.replay()
