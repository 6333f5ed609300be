"""Experiment trackers (TensorBoard, Weights & Biases) as TrainHooks: step scalars, validation images,
held-out losses and the saved LoRA paths, composable with any other hooks through `combine_hooks`.

Each tracker package is imported only when `tracking.report_to` names it; a missing one raises
OptionalDependencyError with the pip command before any model loads (`check_trackers`). W&B runs offline
when WANDB_MODE is unset and its server cannot be reached within a second or two: a run never waits on the
network. No ComfyUI imports.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from ..config import RunConfig
from ..errors import OptionalDependencyError
from .hooks import StepInfo, TrainHooks, ValidationImages

log = logging.getLogger(__name__)

# tracker name -> (import name checked before the run, pip name)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
WANDB_DEFAULT_URL = "https://api.wandb.ai"


def chosen_trackers(cfg: RunConfig) -> list[str]:
    return [name for name in cfg.tracking.report_to if name != "none"]


def check_trackers(cfg: RunConfig) -> None:
    """Raise OptionalDependencyError (with the pip command) for a chosen tracker whose package is missing."""
    for name in chosen_trackers(cfg):
        module, pip = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise OptionalDependencyError(module, f"tracking.report_to '{name}'", pip)


def tracker_log_dir(cfg: RunConfig, run_dir: Path) -> Path:
    return Path(cfg.tracking.log_dir) if cfg.tracking.log_dir else Path(run_dir) / "logs"


def is_reachable(url: str, timeout_s: float = 1.5) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout_s` (DNS included; never longer)."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    opened: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(timeout_s)
    return bool(opened)


def wandb_mode(timeout_s: float = 1.5) -> str:
    """WANDB_MODE when set; otherwise 'online' if the W&B server answers quickly, else 'offline'."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    url = os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)
    if is_reachable(url, timeout_s):
        return "online"
    log.warning("wandb: %s cannot be reached; logging offline (upload later with `wandb sync`)", url)
    return "offline"


class TensorBoardTracker:
    def __init__(self, log_dir: Path, run_name: str, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise OptionalDependencyError("tensorboard", "tracking.report_to 'tensorboard'") from None
        self.log_dir = Path(log_dir) / run_name
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=2, sort_keys=True)}\n```", 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def images(self, step: int, v: ValidationImages) -> None:
        for name, image in zip(_names(v), v.images):
            self.writer.add_image(f"validation/{name}", image.clamp(0, 1), step)

    def text(self, step: int, key: str, value: str) -> None:
        self.writer.add_text(key, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    def __init__(self, log_dir: Path, run_name: str, project: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise OptionalDependencyError("wandb", "tracking.report_to 'wandb'") from None
        self.wandb = wandb
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        mode = wandb_mode()
        kwargs = dict(project=project, name=run_name, dir=str(log_dir), config=config)
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as e:  # no login, server error: keep training, log locally
            if mode == "offline":
                raise
            log.warning("wandb: online start failed (%s: %s); logging offline instead", type(e).__name__, e)
            self.run = wandb.init(mode="offline", **kwargs)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def images(self, step: int, v: ValidationImages) -> None:
        prompts = v.prompts or ("",) * len(v.images)
        logged = {f"validation/{name}": self.wandb.Image(_hwc_uint8(image), caption=prompt)
                  for name, image, prompt in zip(_names(v), v.images, prompts)}
        self.run.log(logged, step=step)

    def text(self, step: int, key: str, value: str) -> None:
        self.run.summary[key] = value

    def close(self) -> None:
        self.run.finish()


def _names(v: ValidationImages) -> list[str]:
    return list(v.names) if v.names else [f"prompt_{i:02d}" for i in range(len(v.images))]


def _hwc_uint8(image):
    return (image.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()


def step_scalars(info: StepInfo) -> dict[str, float]:
    """The scalars logged per step (NaN grad norms, e.g. before the first clip, are left out)."""
    values = {"train/loss": info.loss, "train/lr": info.lr, "train/sigma": info.sigma,
              "train/grad_norm": info.grad_norm, "train/samples_per_s": info.samples_per_s,
              "train/epoch": float(info.epoch)}
    if info.memory_gib:
        values["train/memory_gib"] = info.memory_gib
    return {k: float(v) for k, v in values.items() if v == v}


def _open(cfg: RunConfig, run_dir: Path) -> list:
    log_dir = tracker_log_dir(cfg, run_dir)
    run_name = cfg.tracking.run_name or Path(run_dir).name
    config = cfg.to_dict()
    out = []
    for name in chosen_trackers(cfg):
        if name == "tensorboard":
            out.append(TensorBoardTracker(log_dir, run_name, config))
        else:
            out.append(WandbTracker(log_dir, run_name, cfg.tracking.project, config))
    return out


def tracker_hooks(cfg: RunConfig, run_dir: Path) -> tuple[TrainHooks, Callable[[], None]]:
    """TrainHooks that feed every tracker in `cfg.tracking.report_to`; returns (hooks, close).

    Only the first process of a distributed run logs. Call `close()` when the run ends (also on failure).
    """
    import torch.distributed as dist

    if not chosen_trackers(cfg) or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        return TrainHooks(), lambda: None
    trackers = _open(cfg, run_dir)
    every, total = cfg.tracking.log_every_n_steps, cfg.train.steps

    def on_step(info: StepInfo) -> None:
        if info.step % every == 0 or info.step == total:
            for t in trackers:
                t.scalars(info.step, step_scalars(info))

    def on_validation(v: ValidationImages) -> None:
        scores = {f"validation/clip/{n}": float(c) for n, c in zip(_names(v), v.clip_scores)}
        for t in trackers:
            t.images(v.step, v)
            if scores:
                t.scalars(v.step, scores)

    def on_eval(step: int, losses: dict[float, float]) -> None:
        for t in trackers:
            t.scalars(step, {f"eval/loss_sigma_{s:.2f}": float(x) for s, x in losses.items()})

    def on_lora_saved(path: Path, step: int) -> None:
        for t in trackers:
            t.text(step, "lora_path" if step >= total else "lora_path_intermediate", str(path))

    def close() -> None:
        for t in trackers:
            t.close()

    hooks = TrainHooks(on_step=on_step, on_validation=on_validation, on_eval=on_eval, on_lora_saved=on_lora_saved)
    return hooks, close
