"""Timing a peer's training step from outside its code: a global optimizer post-step hook marks the end of
every optimizer step (after a device synchronisation), so a step's time is the interval between two marks;
peak memory is reset after the warm-up steps and read at the last mark. The peer's code runs unchanged.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..measure import GIB, Timing


@dataclass
class StepClock:
    device: torch.device
    warmup: int
    start: float = field(default_factory=time.perf_counter)
    marks: list[float] = field(default_factory=list)
    warmup_peak_gib: float = 0.0
    peak_gib: float = 0.0

    def mark(self, *_args) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        self.marks.append(time.perf_counter())
        if cuda:
            peak = torch.cuda.max_memory_allocated(self.device) / GIB
            if len(self.marks) == self.warmup:
                self.warmup_peak_gib = peak
                torch.cuda.reset_peak_memory_stats(self.device)
            else:
                self.peak_gib = peak

    def timing(self, last_loss: float = float("nan")) -> Timing:
        """Steps after the warm-up: intervals between consecutive marks (ValueError when too few ran)."""
        if len(self.marks) < self.warmup + 1:
            raise ValueError(f"the peer ran {len(self.marks)} optimizer steps; the clock needs at least "
                             f"{self.warmup + 1} (warm-up {self.warmup} + 1 timed)")
        edges = [self.start, *self.marks]
        steps = [b - a for a, b in zip(edges, edges[1:])]
        timed = steps[self.warmup:]
        return Timing(statistics.median(timed), timed, steps[: self.warmup], self.peak_gib, self.warmup_peak_gib,
                      last_loss)

    @property
    def setup_s(self) -> float:
        """Time from the clock's start to the end of the first optimizer step (the peer's set-up + one step)."""
        return self.marks[0] - self.start if self.marks else 0.0


@contextmanager
def step_clock(device: torch.device, warmup: int) -> Iterator[StepClock]:
    """Marks every optimizer step taken inside the block (any torch.optim optimizer)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    clock = StepClock(device, warmup)
    handle = register_optimizer_step_post_hook(clock.mark)
    try:
        yield clock
    finally:
        handle.remove()
