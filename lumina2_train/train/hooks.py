"""What the training loop reports and asks, as plain callbacks (tqdm in the CLI, ComfyUI in the nodes).

StepInfo.as_dict() is the payload of the `lumina2t.step` websocket event (web/js draws from it).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch


@dataclass(frozen=True)
class StepInfo:
    step: int  # optimizer steps done (1-based after the first step)
    total_steps: int
    loss: float  # mean loss of this step's micro-batches
    lr: float
    sigma: float  # mean noise level of this step's samples
    samples_per_s: float
    eta_s: float
    epoch: int
    bucket: str  # "WxH" of the step's last micro-batch
    grad_norm: float = float("nan")
    memory_gib: float = 0.0
    status: str = "training"

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}  # NaN -> null


@dataclass(frozen=True)
class ValidationImages:
    step: int
    prompts: tuple[str, ...]
    images: torch.Tensor  # (N, 3, H, W) float in [0, 1]
    paths: tuple[Path, ...] = ()
    grid_path: Path | None = None
    names: tuple[str, ...] = ()  # prompt names (prompt-library keys, or prompt_00, prompt_01, ...)
    clip_scores: tuple[float, ...] = ()  # with evaluation_type 'clip': 100·cos(image, prompt) per image


def _noop(*_a, **_k) -> None:
    return None


@dataclass
class TrainHooks:
    on_step: Callable[[StepInfo], None] = _noop
    on_validation: Callable[[ValidationImages], None] = _noop
    on_checkpoint: Callable[[Path, int], None] = _noop
    on_eval: Callable[[int, dict[float, float]], None] = _noop  # (step, {σ: held-out loss})
    on_status: Callable[[str, str], None] = _noop  # (status, detail): caching, compiling, training, ...
    check_interrupt: Callable[[], None] = _noop  # raises to stop the run (ComfyUI's interrupt, Ctrl-C)
    extra: dict = field(default_factory=dict)
    on_lora_saved: Callable[[Path, int], None] = _noop  # (LoRA file written, step); the last one is the result


def combine_hooks(*hooks: TrainHooks | None) -> TrainHooks:
    """One TrainHooks calling each given one's callbacks in order (tqdm + trackers + ComfyUI, ...).

    check_interrupt runs them all, so any of them can stop the run; `extra` dicts are merged, later wins.
    """
    given = [h for h in hooks if h is not None]

    def fan_out(name: str) -> Callable:
        funcs = [getattr(h, name) for h in given if getattr(h, name) is not _noop]
        if not funcs:
            return _noop
        if len(funcs) == 1:
            return funcs[0]

        def call(*args) -> None:
            for f in funcs:
                f(*args)

        return call

    merged: dict = {}
    for h in given:
        merged.update(h.extra)
    callbacks = [f.name for f in fields(TrainHooks) if f.name != "extra"]  # every callback, new ones included
    return TrainHooks(**{name: fan_out(name) for name in callbacks}, extra=merged)


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Ctrl-C (SIGINT) arriving inside the block is raised as KeyboardInterrupt when the block ends, not inside it.

    For the parts of a step that must happen together or not at all (an optimizer update and the step count that
    a checkpoint saves with it): an interrupt in the middle would leave some weights or moments updated and the
    step not counted, and the resume would apply that update twice. Only where Python's default Ctrl-C handler
    is installed, in the main thread; elsewhere (ComfyUI's worker thread, which cancels through the hooks) the
    block runs as is.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
