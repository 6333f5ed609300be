"""Resumable checkpoints: adapter, optimiser, scheduler, RNG states, data position, step and loss history.

A checkpoint is a folder `checkpoints/step_00000042/` built under a temporary name and renamed into place,
so a folder with a final name is always complete. No ComfyUI imports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..storage.atomic import (
    disk_full_error,
    fsync_dir,
    is_disk_full,
    remove_stale_temps,
    save_torch,
    temp_prefix,
    write_error,
)
from ..storage.locks import output_lock
from .batches import DataPosition
from .resume import check_compatible  # noqa: F401  (resume checks moved to train/resume.py)

log = logging.getLogger(__name__)
STEP_PREFIX = "step_"
OLD_SUFFIX = ".old"  # a checkpoint set aside while a newer save of the same step is moved into place


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
    sharded: Path | None = None  # the DCP folder of weights + optimizer (train/parallel.py), when there is one


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_dir():  # the DCP folder of a sharded checkpoint
            _fsync_tree(p)
            continue
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(folder)


def capture_rng() -> dict:
    rng = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack([s for s in torch.cuda.get_rng_state_all()]) if torch.cuda.device_count() else None
    return rng


def restore_rng(rng: dict) -> None:
    torch.random.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))


def checkpoint_temp(run_dir: Path, step: int) -> Path:
    """A new temporary folder for step `step`'s checkpoint (shards are written into it before it completes)."""
    root = Path(run_dir) / "checkpoints"
    try:
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=temp_prefix(f"{STEP_PREFIX}{step:08d}"), suffix=".tmp", dir=root))
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(root, e, "no checkpoint of this step was started") from e
        raise write_error(root / f"{STEP_PREFIX}{step:08d}", e) from e


def save_checkpoint(run_dir: Path, state: CheckpointState, keep_last: int = 2, tmp: Path | None = None) -> Path:
    """Write `state` atomically under run_dir/checkpoints/step_N and prune older checkpoints.

    `tmp`: a folder from `checkpoint_temp` that already holds the run's DCP shards; it is completed and
    moved into place like a fresh one.

    Raises:
        DiskFullError: the disk filled up; the previous checkpoints are untouched and nothing partial is left.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"{STEP_PREFIX}{state.step:08d}"
    try:
        tmp = tmp or checkpoint_temp(run_dir, state.step)
        _write_files(tmp, state)
        _move_into_place(tmp, final)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_disk_full(e):
            done = list_checkpoints(root)
            kept = f"the last complete checkpoint, {done[-1].name}, is kept" if done else "no checkpoint was kept"
            raise disk_full_error(final, e, kept + " and nothing partial was left") from e
        raise
    for old in list_checkpoints(root)[:-keep_last]:
        _discard(old)
    return final


def _write_files(folder: Path, state: CheckpointState) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in state.adapter.items()},
              str(folder / "adapter.safetensors"))
    save_torch({"optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng},
               folder / "training_state.pt")
    meta = {"step": state.step, "epoch": state.position.epoch, "batch": state.position.batch,
            "losses": state.losses, **state.meta}
    (folder / "config.json").write_text(json.dumps(state.config, indent=2, sort_keys=True))
    (folder / "state.json").write_text(json.dumps(meta))  # written last: it marks the folder complete
    _fsync_tree(folder)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder to its final name. A folder of the same step is first set aside as
    `step_N.old`, which `recover_checkpoints` puts back if we die before the new one is in place."""
    if final.exists():
        old = final.with_name(final.name + OLD_SUFFIX)
        if old.exists():
            _discard(old)
        final.rename(old)
        tmp.rename(final)
        _discard(old)
    else:
        tmp.rename(final)
    fsync_dir(final.parent)


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder: renamed to a temporary name first, so a half-deleted folder never keeps
    a name that `list_checkpoints` trusts (a leftover is removed by `recover_checkpoints`)."""
    grave = folder.with_name(f"{temp_prefix(folder.name)}{uuid.uuid4().hex[:8]}.tmp")
    try:
        folder.rename(grave)
    except OSError:
        return
    shutil.rmtree(grave, ignore_errors=True)


def recover_checkpoints(run_dir: Path) -> None:
    """Tidy run_dir/checkpoints after a killed run: put back a `step_N.old` whose replacement never
    arrived, drop it when the replacement is complete, and delete temporaries of dead processes."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return
    for old in sorted(root.glob(f"{STEP_PREFIX}*{OLD_SUFFIX}")):
        final = old.with_name(old.name[: -len(OLD_SUFFIX)])
        if (final / "state.json").is_file() or not (old / "state.json").is_file():
            _discard(old)
        else:
            if final.exists():
                _discard(final)
            old.rename(final)
            log.info("%s: restored the checkpoint set aside by an interrupted save", final)
    remove_stale_temps(root)


@contextlib.contextmanager
def guard_run_folder(run_dir: Path, lora_path: Path | None = None) -> Iterator[None]:
    """Lock the run folder (and the LoRA file when it lies elsewhere) for one run, then tidy what a killed
    run left: set-aside checkpoints are restored, temporaries of dead processes removed.

    Raises:
        BusyError: another live run holds either lock.
    """
    run_dir = Path(run_dir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_lock(run_dir, what="save.name"))
        outside = lora_path is not None and run_dir.resolve() not in Path(lora_path).resolve().parents
        if outside:
            stack.enter_context(output_lock(lora_path, what="save.name"))
        recover_checkpoints(run_dir)
        for folder in (run_dir, run_dir / "loras", run_dir / "samples", *([Path(lora_path).parent] if outside else [])):
            remove_stale_temps(folder)
        yield


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first. A complete `step_N.old` counts while its
    `step_N` is missing (a save killed mid-swap; `recover_checkpoints` renames it back)."""
    if not root.is_dir():
        return []
    found = {}
    for p in root.iterdir():
        name = p.name[: -len(OLD_SUFFIX)] if p.name.endswith(OLD_SUFFIX) else p.name
        if name.startswith(STEP_PREFIX) and name[len(STEP_PREFIX):].isdigit() and (p / "state.json").is_file() \
                and (name not in found or p.name == name):
            found[name] = p
    return [found[k] for k in sorted(found)]


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
        sharded = folder / "sharded" if (folder / "sharded").is_dir() else None
        # weights_only: a checkpoint is a file like any other; a pickle that needs code to load is refused
        extra = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
        step, epoch, batch = meta.pop("step"), meta.pop("epoch"), meta.pop("batch")
        state = CheckpointState(step, DataPosition(epoch, batch), meta.pop("losses"), adapter, extra["optimizer"],
                                extra["scheduler"], extra["rng"], config, meta, folder, sharded)
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError, AttributeError, SafetensorError,
            pickle.UnpicklingError) as e:
        raise CheckpointError(f"{folder}: this checkpoint cannot be read ({str(e).splitlines()[0][:300]}). Use an "
                              "older checkpoint from the same checkpoints/ folder") from None
    return state

