"""Resumable checkpoints: adapter, optimiser, scheduler, RNG states, data position, step and loss history.

A checkpoint is a folder `checkpoints/step_00000042/` built under a temporary name and renamed into place,
so a folder with a final name is always complete. No ComfyUI imports.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .batches import DataPosition

STEP_PREFIX = "step_"
# Settings that must match for a resume to continue the same run (steps may grow; everything else may not).
RESUME_KEYS = {
    "adapter": None,  # whole section
    "train": ("batch_size", "grad_accum", "optimizer", "betas", "eps", "weight_decay", "seed",
              "timestep_sampling", "shift_mode", "static_shift", "logit_mean", "logit_std", "loss_weighting",
              "caption_dropout", "scheduler", "warmup_steps", "use_ema"),
}


@dataclass
class CheckpointState:
    step: int
    position: DataPosition
    losses: list[float]
    adapter: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: dict
    config: dict
    meta: dict = field(default_factory=dict)
    path: Path | None = None


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def capture_rng() -> dict:
    rng = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack([s for s in torch.cuda.get_rng_state_all()]) if torch.cuda.device_count() else None
    return rng


def restore_rng(rng: dict) -> None:
    torch.random.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))


def save_checkpoint(run_dir: Path, state: CheckpointState, keep_last: int = 2) -> Path:
    """Write `state` atomically under run_dir/checkpoints/step_N and prune older checkpoints."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.adapter.items()}, str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng},
                   tmp / "training_state.pt")
        meta = {"step": state.step, "epoch": state.position.epoch, "batch": state.position.batch,
                "losses": state.losses, **state.meta}
        (tmp / "config.json").write_text(json.dumps(state.config, indent=2, sort_keys=True))
        (tmp / "state.json").write_text(json.dumps(meta))  # written last
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and not p.name.endswith((".tmp", ".old")) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, a run folder or its checkpoints/ folder -> the newest complete checkpoint."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    for root in (p / "checkpoints", p):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise CheckpointError(f"{p}: no checkpoint found (looked for checkpoints/step_*/state.json). "
                          "Give a run folder or one of its checkpoints/step_* folders")


def load_checkpoint(path: str | Path) -> CheckpointState:
    folder = resolve_checkpoint(path)
    try:
        meta = json.loads((folder / "state.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        adapter = load_file(str(folder / "adapter.safetensors"))
        extra = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: this checkpoint cannot be read ({e}). Use an older checkpoint "
                              "from the same checkpoints/ folder") from None
    step, epoch, batch = meta.pop("step"), meta.pop("epoch"), meta.pop("batch")
    losses = meta.pop("losses")
    return CheckpointState(step, DataPosition(epoch, batch), losses, adapter, extra["optimizer"],
                           extra["scheduler"], extra["rng"], config, meta, folder)


def check_compatible(saved: dict, current: dict, where: Path) -> None:
    """CheckpointError listing every resume-critical setting that differs."""
    diffs = []
    for section, keys in RESUME_KEYS.items():
        a, b = saved.get(section, {}), current.get(section, {})
        for k in keys or sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                diffs.append(f"{section}.{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}")
    if diffs:
        raise CheckpointError(f"{where}: this checkpoint was made with other settings ({'; '.join(diffs)}). "
                              "Resume with the checkpoint's settings, or start a new run")
