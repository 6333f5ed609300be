"""The Train node's work, in the library: a ComfyUI MODEL + cache + settings -> the LoRA file in models/loras, a
MODEL clone patched from that file's state dict through ComfyUI's own LoRA loader, the loss
history; plus the Save Adapter and Plot Loss nodes' work.

A full fine-tune (adapter.kind 'full') writes the whole fine-tuned diffusion model into models/diffusion_models
instead (what UNETLoader lists); its MODEL output is the input MODEL patched, through the same LoRA loader, with
the `.diff` patches that turn its weights into the file's (fullmodel.diff_state_dict), and its diffusers folder
goes into the run folder. Trackers (tracking.*) and the Hub upload (hub.*) run as in the CLI.

Order: every setting and path is checked before a model loads; then this process's training slot is taken
(locks.training_lock), the MODEL is cloned and loaded (backbones/comfy.py), the loop runs with ComfyUI's progress,
cancel and websocket hooks plus the job history the live chart reads (comfy_jobs.py). ComfyUI is imported inside
functions only.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import run
from ..adapters.kinds import COMFY_LOADABLE, kind_of
from ..backbones.comfy import ComfyBackbone
from ..backbones.inference import training_mode
from ..backbones.nextdit import ArchConfig
from ..config import RunConfig
from ..encoders.comfy import ComfyEncoders
from ..errors import ConfigError
from ..files import formats
from ..files.consumers import arch_from_shapes
from ..files.formats import SAVE_DTYPES, detect_format, lora_metadata, read_lora, save_lora, save_state_dict
from ..files.fullmodel import diff_state_dict
from ..plot import plot_losses
from ..storage.locks import training_lock
from ..storage.paths import lora_file as confined_lora_file
from ..storage.paths import resume_folder as confined_resume_folder
from ..storage.paths import writable_file
from ..train import combine_hooks
from ..train.checkpoint import resolve_checkpoint
from ..train.distributed import current_world
from ..train.recipe_choice import choose_recipe
from .bridge import apply_lora_to_model, comfy_hooks, comfy_training_state, compile_status
from .data import output_root, validation_prompts
from .jobs import finish_job, job_hooks, reporting_stop, start_job

log = logging.getLogger(__name__)
LORA_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ComfyTrainOutput:
    model: object  # ComfyUI MODEL clone with the saved LoRA (full fine-tune: the .diff patches) patched in
    lora: dict[str, torch.Tensor]  # the saved file's state dict (ComfyUI's LORA_MODEL); full: the .diff patches
    losses: dict  # {"loss": [float, ...]}, ComfyUI's LOSS_MAP
    path: Path  # the LoRA file in models/loras; full: the diffusion-model file in models/diffusion_models
    step: int
    run_dir: Path
    checkpoint: Path | None
    previews: torch.Tensor | None = None  # the last validation images as a ComfyUI IMAGE (N, H, W, 3), if any


# ---------------------------------------------------------------- names and folders

def lora_file(loras_root: Path, name: str, *, what: str = "lora_name") -> Path:
    """A new file for LoRA `name` (a subfolder allowed) under models/loras: `name.safetensors`, or `name_2`,
    `name_3`, ... when taken (nothing the user has is overwritten).

    Raises:
        PathError (a ConfigError): the name is absolute, uses '..', leads outside through a link, ... (paths.py).
    """
    base = confined_lora_file(loras_root, name.strip(), what=what)
    stem, candidate, n = base.name[: -len(LORA_SUFFIX)], base, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = base.with_name(f"{stem}_{n}{LORA_SUFFIX}")
    return candidate


def resume_folder(output_root: Path, resume_from: str) -> str:
    """The checkpoint to resume: a run or checkpoint folder relative to output/lumina2_train (or absolute inside
    it; a resumed run writes there), resolved to its newest complete checkpoint. '' when not resuming."""
    if not resume_from.strip():
        return ""
    return str(resolve_checkpoint(confined_resume_folder(output_root, resume_from.strip(), what="resume_from")))


def comfy_loras_root() -> Path:
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


def comfy_diffusion_models_root() -> Path:
    """Where a full fine-tune goes: the first of ComfyUI's "diffusion_models" folders named so (a stock install
    lists the legacy models/unet first), else the first one. UNETLoader (Load Diffusion Model) lists both."""
    import folder_paths

    paths = [Path(p) for p in folder_paths.get_folder_paths("diffusion_models")]
    return next((p for p in paths if p.name == "diffusion_models"), paths[0])


def comfy_folder(name: str) -> Path:
    """The ComfyUI models folder an adapter kind's file goes into (AdapterKind.comfy_folder)."""
    return {"loras": comfy_loras_root, "diffusion_models": comfy_diffusion_models_root}[name]()


# ---------------------------------------------------------------- checks before any model loads

def check_cached_prompts(cache, cfg: RunConfig) -> None:
    """Every validation prompt (and the negative one) must be in the cache: the Train node has no text encoder."""
    missing = []
    for prompt in validation_prompts(cfg.validation):
        try:
            cache.prompt_features(prompt)
        except KeyError:
            missing.append(prompt)
    if missing:
        shown = "; ".join(repr(p[:60]) for p in missing[:3])
        raise ConfigError(f"validation: {len(missing)} prompt(s) have no cached text features ({shown}). Connect the "
                          "same Validation Settings to the 'validation' input of Cache Latents & Text too, and queue "
                          "again")


def prepare_plan(cfg: RunConfig, cache, lora_name: str) -> run.Plan:
    """run.prepare over `cfg` with the cache's data and ComfyUI's folders filled in; the plan's output is the
    file to write: a LoRA in models/loras, or a full fine-tune's diffusion model in models/diffusion_models."""
    out = output_root()
    kind = kind_of(cfg.adapter)
    lora_path = lora_file(comfy_folder(kind.comfy_folder), lora_name)
    writable_file(lora_path, what="lora_name")  # a file named like a subfolder, a folder named like the file, ...
    save = dataclasses.replace(cfg.save, output_dir=str(out), name=lora_path.stem)
    cfg = dataclasses.replace(cfg, data=cache.data, cache=cache.config, save=save,
                              resume_from=resume_folder(out, cfg.resume_from)).validate()
    if kind.save_formats is not None and cfg.save.format not in COMFY_LOADABLE:  # full: a UNETLoader file
        raise ConfigError(f"save.format '{cfg.save.format}': the Train node writes files ComfyUI loads (comfyui or "
                          "kohya). Export other formats with the Save Adapter node")
    check_cached_prompts(cache, cfg)
    import comfy.model_management as mm

    # The Cache node wrote its own cache folder; the output folder is ComfyUI's.
    return run.prepare(cfg, current_world(), device=mm.get_torch_device(), output=lora_path,
                       output_what="ComfyUI's output folder", check_cache=False)


# ---------------------------------------------------------------- training

def _decoder(vae):
    if vae is None:
        return None
    latents = ComfyEncoders(vae=vae).latent_encoder()
    return lambda z: latents.decode(z).float().cpu()


def model_file(model) -> str | None:
    """The file a ComfyUI MODEL was loaded from where its loader recorded it (newer ComfyUI's
    `cached_patcher_init = (loader, (path, ...))`, kept by clones), else None. Z-Image's variant may be in its name."""
    init = getattr(model, "cached_patcher_init", None)
    args = init[1] if isinstance(init, tuple) and len(init) > 1 else ()
    first = args[0] if isinstance(args, (tuple, list)) and args else None
    return str(first) if isinstance(first, (str, Path)) else None


def _prompt_id() -> str | None:
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(getattr(PromptServer, "instance", None), "last_prompt_id", None)


def train_in_comfy(model, cache, cfg: RunConfig, *, lora_name: str, node_id: str, vae=None,
                   workflow: dict | None = None) -> ComfyTrainOutput:
    """Train an adapter on ComfyUI MODEL `model` from `cache`; write it to models/loras and patch it into a clone.

    A full fine-tune (adapter.kind 'full') trains copies of the chosen weights, writes the whole fine-tuned
    diffusion model to models/diffusion_models (and a diffusers folder to the run folder) and patches the
    differences to the input MODEL's weights into the clone as `.diff` patches.

    Args:
        cfg: adapter, train, validation, save, tracking and hub settings (+ resume_from, relative to
            output/lumina2_train); its data and cache sections come from `cache`, its output folder from ComfyUI.
        lora_name: file name under models/loras (full: models/diffusion_models; a subfolder is allowed); a free
            name is chosen if it exists.
        vae: decodes validation samples into previews (optional).
    Raises:
        ConfigError, CheckpointError, ModelError, BusyError (another training runs in this process), FormatError,
        OptionalDependencyError (a chosen tracker's package is missing); HubError (hub.push failed) after every
        local file is written; ComfyUI's InterruptProcessingException on cancel and torch.OutOfMemoryError, after
        a resumable checkpoint.
    """
    plan = prepare_plan(cfg, cache, lora_name)
    cfg, run_dir, lora_path = plan.cfg, plan.run_dir, plan.output
    job = start_job(node_id, _prompt_id())
    # the job first: ComfyUI's progress hook (in comfy_hooks) raises on cancel, and that step was done
    hooks = compile_status(combine_hooks(job_hooks(job), comfy_hooks(node_id, cfg.train.steps)), cfg.train.compile)
    with reporting_stop(hooks, job, run_dir, cfg.save.output_dir), training_lock(f"Train node {node_id}"):
        hooks.on_status("loading", "the MODEL onto the training device")
        backbone = ComfyBackbone.from_model_patcher(model)
        # the member's recipe fills the timestep / sampler settings left at their defaults (Z-Image: its file name)
        plan = dataclasses.replace(plan, cfg=choose_recipe(cfg, backbone.arch, source=model_file(model), where="model"))
        cfg = plan.cfg
        with training_mode(), comfy_training_state():
            result = run.train(plan, backbone, cache, hooks, decode=_decoder(vae), workflow=workflow)
        sd = _patches(cfg, result, backbone, lora_path)
        del backbone
    patched = apply_lora_to_model(model, sd)
    finish_job(job, "done", str(lora_path))
    log.info("%s written to %s (%d steps); run folder %s", "Model" if kind_of(cfg.adapter).writes_model else "LoRA",
             lora_path, result.step, result.run_dir)
    run.publish(plan, result)  # raises HubError when offline; every local file is written by now
    return ComfyTrainOutput(patched, sd, {"loss": list(result.losses)}, lora_path, result.step, result.run_dir,
                            result.checkpoint, _previews(result.validations))


def _patches(cfg: RunConfig, result, backbone, path: Path) -> dict[str, torch.Tensor]:
    """What the MODEL output gets patched with: the saved LoRA file's tensors, or a full fine-tune's `.diff`
    patches from its saved file to the loaded MODEL's weights (needs the trained clone still loaded)."""
    if kind_of(cfg.adapter).model_patch == "file":
        return load_lora_state_dict(path)
    with torch.no_grad():
        return diff_state_dict(result.adapters, backbone, saved=path)


def _previews(validations) -> torch.Tensor | None:
    if not validations or validations[-1].images.numel() == 0 or validations[-1].images.shape[-1] < 2:
        return None
    return validations[-1].images.float().clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def load_lora_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors exactly as ComfyUI's LoRA loaders read them (comfy.utils.load_torch_file)."""
    import comfy.utils

    return comfy.utils.load_torch_file(str(path), safe_load=True)


# ---------------------------------------------------------------- Save Adapter, Plot Loss

def save_lora_file(lora: dict[str, torch.Tensor], name: str, *, fmt: str, dtype: str, destination: str) -> Path:
    """Write a LORA_MODEL state dict as `fmt` under models/loras or output/lumina2_train/loras (never overwriting).

    Plain LoRA converts between every format; LoHa, LoKr and DoRA files, and a full fine-tune's `.diff` patches
    (a full-rank LoRA, as large as the trained weights), are written in ComfyUI's layout only.
    """
    if dtype not in SAVE_DTYPES:
        raise ConfigError(f"dtype '{dtype}' is unknown; choose one of {', '.join(SAVE_DTYPES)}")
    root = comfy_loras_root() if destination == "loras" else output_root() / "loras"
    path = lora_file(root, name, what="name")
    writable_file(path, what="name")  # before anything is converted
    sd = {k: v.detach().cpu() for k, v in lora.items()}
    is_plain = all(k.endswith(("lora_A.weight", "lora_B.weight", "lora_up.weight", "lora_down.weight", ".alpha"))
                   for k in sd)
    if not is_plain:
        if fmt != "comfyui":
            raise ConfigError(f"format '{fmt}': this adapter is LoHa, LoKr, DoRA or a full fine-tune's .diff "
                              "patches, which only the comfyui layout holds. Choose 'comfyui' (a full fine-tune's "
                              "model file is already in models/diffusion_models)")
        detect_format(sd.keys())
        formats.warn_consumers(fmt, False, (), ArchConfig())
        return save_state_dict(sd, path, dtype, {"modelspec.architecture": "lumina-2/lora"})
    mods = read_lora(sd)
    rank = max((m.down.shape[0] for m in mods.values()), default=0)
    arch = arch_from_shapes({n: (m.up.shape[0], m.down.shape[1]) for n, m in mods.items()})  # the model's widths
    return save_lora(mods, path, fmt=fmt, dtype=dtype, arch=arch,
                     metadata=lora_metadata(rank=rank, alpha=float(rank), step=0, title=path.stem))


def loss_image(losses: dict, *, log_scale: bool = False, width: int = 720, height: int = 400) -> torch.Tensor:
    """LOSS_MAP -> a ComfyUI IMAGE (1, H, W, 3) in [0, 1] of the raw and smoothed loss per step."""
    import numpy as np

    values = [float(v) for v in (losses or {}).get("loss", [])]
    img = plot_losses(values, width=width, height=height, log_scale=log_scale)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


__all__ = ["ComfyTrainOutput", "check_cached_prompts", "comfy_diffusion_models_root", "comfy_folder",
           "load_lora_state_dict", "lora_file", "loss_image", "prepare_plan", "resume_folder", "save_lora_file", "train_in_comfy"]
