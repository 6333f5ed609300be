"""The run's micro-batches, each collated with its σ and noise drawn, prepared ahead on a worker thread.

Preparing a batch is CPU work (reading cache entries, stacking and padding, drawing noise from the step's
CPU generator, pinning for the copy to the GPU). Done inline, the GPU idles through it at the start of every
step: at 1024² batch 1 on an H200 that was 19 ms of a 210 ms step (docs/benchmarks.md). A worker thread
prepares the next `depth` micro-batches while the GPU runs the current one. The order and the random draws
are those of the inline path (each micro-batch's generator is seeded by (seed, step, micro) and handed over
with it), so prefetching changes when the work happens, never what is computed; a micro-batch prepared but
not trained on when the run stops is dropped, and resume redoes it from the checkpoint's position.
No ComfyUI imports.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .batches import Bucket, DataPosition, rank_slice
from .step import Batch, collate, draw_noise


@dataclass
class Ready:
    """One micro-batch ready to train on."""

    position: DataPosition  # the data position after this batch (committed with its optimizer step)
    bucket: Bucket
    batch: Batch
    sigma: torch.Tensor  # (B,) noise levels, CPU
    noise: torch.Tensor  # (B, 16, h, w), CPU (pinned when training on CUDA)
    gen: torch.Generator  # the micro-step's generator, after the collate and σ/noise draws (rollout goes on)


Prepare = Callable[[int, int, tuple[DataPosition, Bucket, list[int]]], Ready]
_DONE = object()


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The generator of optimizer step `step`'s micro-step `micro` (noise, σ, flips, caption dropout)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 997 + micro)


def prefetch_depth(device: torch.device, cache) -> int:
    """Micro-batches prepared ahead: 2 on CUDA; 0 (inline) on the CPU, where the thread would take cores from the
    step, and for a cache that encodes on the fly (its VAE runs on the GPU, in the training thread)."""
    return 2 if device.type == "cuda" and not getattr(cache, "on_the_fly", False) else 0


def batch_preparer(cache, timesteps, seed: int, caption_dropout: float, world, pin: bool) -> Prepare:
    """prepare(step, micro, (position, bucket, global indices)): this rank's slice collated (flips and caption
    dropout drawn), then σ and noise drawn, all from the micro-step's generator in that order."""
    def prepare(step: int, micro: int, item) -> Ready:
        position, bucket, indices = item
        gen = step_generator(seed, step, micro)
        part = rank_slice(len(indices), world.rank, world.size) if world.is_distributed else None
        batch = collate(cache, indices, bucket, gen, caption_dropout, part)
        sigma, noise = draw_noise(batch, timesteps, gen)
        if pin:
            batch, noise = batch.pinned(), noise.pin_memory()
        return Ready(position, bucket, batch, sigma, noise, gen)

    return prepare


class MicroBatches:
    """`next()` returns the micro-batches of steps first_step, first_step + 1, ... in order (grad_accum per step).

    depth 0 prepares each one when asked (no thread); depth k keeps up to k prepared ahead on a daemon thread.
    An exception while preparing is raised by the `next()` that would have returned that micro-batch.
    """

    def __init__(self, batch_iter: Iterator, prepare: Prepare, first_step: int, grad_accum: int, depth: int = 0):
        self._plan = _plan(batch_iter, first_step, grad_accum)
        self._prepare = prepare
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._work, name="lumina2t-prefetch", daemon=True)
            self._thread.start()

    def next(self) -> Ready:
        if self._queue is None:
            step, micro, item = next(self._plan)
            return self._prepare(step, micro, item)
        got = self._queue.get()
        if isinstance(got, BaseException):
            raise got
        if got is _DONE:
            raise StopIteration
        return got

    def close(self) -> None:
        """Stop the worker (prepared micro-batches are dropped)."""
        self._stop.set()
        if self._thread is None:
            return
        while self._thread.is_alive():
            try:  # unblock a worker waiting for room in the queue
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __enter__(self) -> MicroBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _work(self) -> None:
        try:
            for step, micro, item in self._plan:
                if self._stop.is_set():
                    return
                self._put(self._prepare(step, micro, item))
            self._put(_DONE)
        except BaseException as e:  # handed to the training thread, which raises it
            self._put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


def _plan(batch_iter: Iterator, first_step: int, grad_accum: int):
    step = first_step
    while True:
        for micro in range(grad_accum):
            try:
                item = next(batch_iter)
            except StopIteration:
                return
            yield step, micro, item
        step += 1
