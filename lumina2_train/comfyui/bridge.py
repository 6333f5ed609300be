"""ComfyUI's progress, cancel, websocket events and LoRA application for the Train node (the inference-mode
escape is backbones/inference.py).

ComfyUI is imported inside functions only (importing this module loads no `comfy`, `server` or `folder_paths`).
Events sent to the browser (`PromptServer.send_sync`, to the client that queued the prompt):
    lumina2t.step        {"node": id, **StepInfo.as_dict()}            every optimizer step
    lumina2t.status      {"node": id, "status": str, "detail": str}    loading, compiling, validating, training,
                                                                       saving, cancelled, failed (comfy_jobs.py)
    lumina2t.validation  {"node": id, "step": int, "prompts": [...], "paths": [...], "grid": str | None}
    lumina2t.checkpoint  {"node": id, "step": int, "path": str}
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import FormatError
from ..train.hooks import StepInfo, TrainHooks, ValidationImages

log = logging.getLogger(__name__)
PREVIEW_MAX_PX = 512
EMPTY_IMAGE_PX = 64


# ---------------------------------------------------------------- ComfyUI's training flag

@contextmanager
def comfy_training_state() -> Iterator[None]:
    """ComfyUI's own "training" flag for the block, where the running ComfyUI has one.

    [newer] `comfy.model_management.in_training` makes ComfyUI's models (e.g. the Lumina forward) skip the fused
    inference-only kernels; ComfyUI's trainer sets it around its loop. The previous value is restored; a ComfyUI
    without the attribute is left without it."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = before


# ---------------------------------------------------------------- progress, events, cancel

def _sender(node_id: str):
    """send(event, data) to the client that queued the prompt; a no-op without a running server."""
    try:
        from server import PromptServer
    except ImportError:
        PromptServer = None

    def send(event: str, data: dict) -> None:
        server = getattr(PromptServer, "instance", None)
        if server is None:
            return
        try:
            server.send_sync(event, {"node": node_id, **data}, getattr(server, "client_id", None))
        except Exception as e:  # a closed socket must never stop training
            log.debug("could not send %s: %s", event, e)

    return send


def _preview(images: ValidationImages):
    """("JPEG", PIL image, max px) for ProgressBar.update_absolute, or None when nothing was decoded."""
    if images.images.numel() == 0 or images.images.shape[-1] < 2:
        return None
    from ..train.validation import image_grid

    return ("JPEG", image_grid(images.images.float().cpu()), PREVIEW_MAX_PX)


def preview_grid(images: torch.Tensor | None) -> torch.Tensor:
    """The validation images, a ComfyUI IMAGE (N, H, W, 3), as one grid image (1, H', W', 3), as the progress
    preview shows them; a black 64 px image when there are none (no validation prompts, or no VAE)."""
    if images is None or images.numel() == 0:
        return torch.zeros(1, EMPTY_IMAGE_PX, EMPTY_IMAGE_PX, 3)
    import numpy as np

    from ..train.validation import image_grid

    grid = image_grid(images.permute(0, 3, 1, 2).float().cpu())
    return torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)[None]


def compile_status(hooks: TrainHooks, is_compiling: bool) -> TrainHooks:
    """`hooks` reporting "compiling" from the start of training until the first step is done (torch.compile
    builds the blocks' kernels then), and "training" from there. Unchanged unless `is_compiling` on a CUDA device
    (train.compile applies only there)."""
    import comfy.model_management as mm

    if not is_compiling or mm.get_torch_device().type != "cuda":
        return hooks
    stepped: list[bool] = []

    def on_status(status: str, detail: str) -> None:
        if status == "training" and not stepped:
            status, detail = "compiling", "torch.compile builds the kernels during the first step"
        hooks.on_status(status, detail)

    def on_step(info: StepInfo) -> None:
        if not stepped:
            stepped.append(True)
            hooks.on_status("training", f"step {info.step}/{info.total_steps}")
        hooks.on_step(info)

    return dataclasses.replace(hooks, on_status=on_status, on_step=on_step)


def comfy_hooks(node_id: str, total_steps: int) -> TrainHooks:
    """TrainHooks that drive ComfyUI's progress bar, stream lumina2t.* events and honour /interrupt.

    The progress bar is updated every step (and with the sample grid as preview after each validation);
    `check_interrupt` raises comfy.model_management.InterruptProcessingException once the user cancels.
    """
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(total_steps, node_id=node_id)
    send = _sender(node_id)

    def on_step(info: StepInfo) -> None:
        send("lumina2t.step", info.as_dict())  # first: the progress hook raises on cancel, after this step was done
        bar.update_absolute(info.step, info.total_steps)

    def on_validation(images: ValidationImages) -> None:
        preview = _preview(images)
        if preview is not None:
            bar.update_absolute(min(images.step, total_steps), total_steps, preview)
        send("lumina2t.validation", {"step": images.step, "prompts": list(images.prompts),
                                     "paths": [str(p) for p in images.paths],
                                     "grid": str(images.grid_path) if images.grid_path else None})

    def on_checkpoint(path: Path, step: int) -> None:
        send("lumina2t.checkpoint", {"step": step, "path": str(path)})

    def on_status(status: str, detail: str) -> None:
        send("lumina2t.status", {"status": status, "detail": detail})

    return TrainHooks(on_step=on_step, on_validation=on_validation, on_checkpoint=on_checkpoint,
                      on_status=on_status, check_interrupt=mm.throw_exception_if_processing_interrupted)


# ---------------------------------------------------------------- LoRA through ComfyUI's own loader

class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _capture_warnings() -> Iterator[list[str]]:
    root = logging.getLogger()
    handler, old_level = _Warnings(), root.level
    root.addHandler(handler)
    if not root.isEnabledFor(logging.WARNING):
        root.setLevel(logging.WARNING)
    try:
        yield handler.messages
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def apply_lora_to_model(model, lora: dict[str, torch.Tensor] | str | Path, strength: float = 1.0):
    """A clone of ComfyUI MODEL `model` with `lora` patched in by ComfyUI's own LoRA loader.

    The same call LoraLoaderModelOnly makes (`comfy.sd.load_lora_for_models`), so the result equals what the
    stock node gives from the saved file. `lora` is a state dict or a file path (read as that node reads it).
    Raises FormatError when any key is not loaded (ComfyUI itself only logs it).
    """
    import comfy.sd
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(lora), safe_load=True) if isinstance(lora, (str, Path)) else lora
    with _capture_warnings() as warnings:
        patched, _ = comfy.sd.load_lora_for_models(model, None, sd, strength, 0)
    missed = [m for m in warnings if m.startswith(("lora key not loaded", "NOT LOADED"))]
    if missed:
        raise FormatError(
            f"LoRA: {len(missed)} key(s) did not load into this MODEL ({'; '.join(missed[:3])}). The LoRA was "
            "made for another model, or the MODEL is not the Lumina2 it was trained on")
    log.info("LoRA applied through ComfyUI's loader: %d tensors, strength %g", len(sd), strength)
    return patched


__all__ = ["apply_lora_to_model", "comfy_hooks", "comfy_training_state", "compile_status", "preview_grid"]
