"""Terminal progress for CLI runs: a tqdm bar for caching and one for training steps."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..train import StepInfo, TrainHooks

log = logging.getLogger("lumina2_train")


def tqdm_hooks(total_steps: int) -> tuple[TrainHooks, Callable[[], None]]:
    """TrainHooks that drive a tqdm bar; returns (hooks, close)."""
    from tqdm import tqdm

    bar = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True)

    def on_step(info: StepInfo) -> None:
        bar.n = info.step
        bar.set_postfix(loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}", sigma=f"{info.sigma:.2f}", refresh=False)
        bar.refresh()

    def on_status(status: str, detail: str) -> None:
        if status not in ("training",):
            bar.write(f"[{status}] {detail}")

    return TrainHooks(on_step=on_step, on_status=on_status), bar.close


def tqdm_progress(desc: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A (done, total) callback for caching passes; returns (callback, close)."""
    from tqdm import tqdm

    state: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)
        state["bar"].n = done
        state["bar"].refresh()
        if done >= total:
            close()

    def close() -> None:
        bar = state.pop("bar", None)
        if bar is not None:
            bar.close()

    return update, close
