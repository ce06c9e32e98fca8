"""A clock for generation: stamps after every generated token, for eval's timing and the benchmarks (imports torch
and transformers only, so a benchmark's import path stays free of the training stack)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from transformers import StoppingCriteria


class StepClock(StoppingCriteria):
    """Stamps a clock after every generated token (the prefill's included); never stops generation.

    `now` is the clock (benchmarks pass one that also reads CPU time). A CUDA device is synchronised first, so a
    stamp comes after the step's kernels.
    """

    def __init__(self, now: Callable[[], object] = time.perf_counter) -> None:
        self.now = now
        self.stamps: list = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if input_ids.is_cuda:
            torch.cuda.synchronize(input_ids.device)
        self.stamps.append(self.now())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
