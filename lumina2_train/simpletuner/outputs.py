"""config.json keys about model paths, validation, outputs, the Hub and trackers, mapped to our settings.

Relative paths follow SimpleTuner: against the folder it runs in (inputs may also sit next to config.json).
This trainer never downloads: a model that is not a local path is an error naming the key. No ComfyUI imports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .context import Context
from .options import Handler, to

DEFAULT_BASE = "Alpha-VLLM/Lumina-Image-2.0"


def _local_model(ctx: Context, key: str, value: Any) -> str | None:
    path = ctx.input_path(str(value))
    if not path.exists():
        ctx.problem(key, f"'{value}' is not a local path (this trainer never downloads)",
                    f"Download it first (hf download {value} --local-dir models/Lumina-Image-2.0) and give that "
                    "folder")
        return None
    return str(path)


def _base_model(ctx: Context, key: str, value: Any) -> None:
    path = _local_model(ctx, key, value)
    if path is not None:
        model = ctx.out.setdefault("model", {})
        model.setdefault("transformer", path)
        model.setdefault("text_encoder", path)
        ctx.set(key, value, "model.vae", model.get("vae", path),
                "a diffusers folder: also model.transformer and model.text_encoder unless their own keys set them")


def _part(field: str, subfolder_key: str = "") -> Handler:
    def handle(ctx: Context, key: str, value: Any) -> None:
        path = _local_model(ctx, key, value)
        if path is None:
            return
        sub = ctx.get(subfolder_key) if subfolder_key else None
        if sub:
            path = str(Path(path) / str(sub))
        ctx.set(key, value, f"model.{field}", path, f"with {subfolder_key} '{sub}'" if sub else "")

    return handle


def _subfolder(ctx: Context, key: str, value: Any) -> None:
    ctx.used(key, value, "joined to pretrained_transformer_model_name_or_path")


def _input_file(target: str) -> Handler:
    def handle(ctx: Context, key: str, value: Any) -> None:
        path = ctx.input_path(str(value))
        if not path.exists():
            ctx.problem(key, f"'{value}' does not exist (looked in {ctx.cwd} and {ctx.base})", "Fix the path")
            return
        ctx.set(key, value, target, str(path))

    return handle


def _output_dir(target: str) -> Handler:
    def handle(ctx: Context, key: str, value: Any) -> None:
        ctx.set(key, value, target, str(ctx.output_path(str(value))))

    return handle


def _validation_prompt(ctx: Context, key: str, value: Any) -> None:
    if ctx.as_bool("validation_disable", ctx.get("validation_disable", False)):
        ctx.ignored(key, value, "validation_disable is set")
    else:
        ctx.set(key, value, "validation.prompts", [str(value)])


def _validation_disable(ctx: Context, key: str, value: Any) -> None:
    if ctx.as_bool(key, value):
        ctx.out.setdefault("validation", {})["prompt_library"] = ""
        ctx.set(key, value, "validation.prompts", [], "no validation images")
    else:
        ctx.used(key, value, "validation stays on")


def _prompt_library(ctx: Context, key: str, value: Any) -> None:
    if ctx.as_bool(key, value):
        ctx.ignored(key, value, "SimpleTuner's built-in prompt library is not shipped; use user_prompt_library")
    else:
        ctx.used(key, value, "off")


def _resolution_side(ctx: Context, key: str, text: str) -> tuple[int, int] | None:
    text = text.strip().lower()
    try:
        if "x" in text:
            w, h = (int(float(p)) for p in text.split("x", 1))
            return w, h
        number = float(text)
    except ValueError:
        ctx.problem(key, f"must look like 1024x1024 or 1024 (got {text!r})", "Fix the value")
        return None
    side = round(math.sqrt(number * 1e6) / 16) * 16 if number <= 16 else int(number)  # megapixels or pixels
    return side, side


def _validation_resolution(ctx: Context, key: str, value: Any) -> None:
    sizes = [s for s in str(value).split(",") if s.strip()]
    size = _resolution_side(ctx, key, sizes[0]) if sizes else None
    if size is None:
        return
    ctx.out.setdefault("validation", {})["height"] = size[1]
    extra = f"only the first of {len(sizes)} sizes is drawn" if len(sizes) > 1 else ""
    ctx.set(key, value, "validation.width", size[0], "; ".join(filter(None, [f"validation.height = {size[1]}",
                                                                             extra])))


def _noise_scheduler(ctx: Context, key: str, value: Any) -> None:
    if value in ("euler", "flow_matching", "flow-euler"):
        ctx.used(key, value, "validation samples with flow Euler")
    else:
        ctx.ignored(key, value, "validation always samples with flow Euler (docs/recipe.md)")


def _evaluation_type(ctx: Context, key: str, value: Any) -> None:
    if value in (None, "none"):
        ctx.used(key, value, "no CLIP scores")
        return
    model = ctx.get("pretrained_evaluation_model_name_or_path")
    if value == "clip" and model and ctx.input_path(str(model)).is_dir():
        ctx.out.setdefault("validation", {})["clip_model"] = str(ctx.input_path(str(model)))
        ctx.set(key, value, "validation.evaluation_type", "clip",
                "validation.clip_model from pretrained_evaluation_model_name_or_path")
    else:
        ctx.ignored(key, value, "CLIP scores need a local CLIP folder in pretrained_evaluation_model_name_or_path "
                                f"(got {model!r})")


def _evaluation_model(ctx: Context, key: str, value: Any) -> None:
    ctx.used(key, value, "read with evaluation_type")


def _eval_interval(ctx: Context, key: str, value: Any) -> None:
    ctx.ignored(key, value, "CLIP scores come with every validation; the held-out loss needs "
                            "validation.eval_holdout images, which SimpleTuner does not set")


def _hub_model_id(ctx: Context, key: str, value: Any) -> None:
    name = str(value).split("/")[-1]
    ctx.out.setdefault("save", {})["name"] = name
    ctx.set(key, value, "hub.model_id", str(value), f"also save.name '{name}', the run folder, as in SimpleTuner")


def _report_to(ctx: Context, key: str, value: Any) -> None:
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    if "all" in names:
        names = ["tensorboard", "wandb"]
    ours = [n for n in names if n in ("tensorboard", "wandb")]
    others = [n for n in names if n not in ("tensorboard", "wandb", "none")]
    note = f"{others} not offered (tensorboard, wandb)" if others else ""
    ctx.set(key, value, "tracking.report_to", ours, note)


def _resume(ctx: Context, key: str, value: Any) -> None:
    out_dir = Path(ctx.out.get("save", {}).get("output_dir") or ctx.output_path(str(ctx.get("output_dir", "output"))))
    name = ctx.out.get("save", {}).get("name", "lumina2_lora")
    if value == "latest":
        run = out_dir / name
        if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
            ctx.set(key, value, "resume_from", str(run), "the newest checkpoint of the run folder")
        else:
            ctx.used(key, value, f"no earlier run in {run}; training starts fresh")
        return
    path = Path(str(value)) if Path(str(value)).is_absolute() else out_dir / str(value)
    if not path.exists() and ctx.input_path(str(value)).exists():
        path = ctx.input_path(str(value))
    ctx.set(key, value, "resume_from", str(path), "a checkpoint written by this trainer (SimpleTuner's own "
                                                  "checkpoints cannot be resumed here)")


def _lora_format(ctx: Context, key: str, value: Any) -> None:
    if value in ("diffusers", "comfyui", "kohya"):
        ctx.set(key, value, "save.format", value)
    else:
        ctx.ignored(key, value, "LoRA formats here: comfyui, diffusers, kohya")


def _cache_dir(ctx: Context, key: str, value: Any) -> None:
    if "dir" in ctx.out.get("cache", {}):
        ctx.ignored(key, value, f"text and latents share one fingerprinted cache, cache.dir "
                                f"'{ctx.out['cache']['dir']}'")
    else:
        ctx.set(key, value, "cache.dir", str(ctx.output_path(str(value))),
                "one fingerprinted cache holds latents and text")


HANDLERS: dict[str, Handler] = {
    "pretrained_model_name_or_path": _base_model,
    "pretrained_transformer_model_name_or_path": _part("transformer", "pretrained_transformer_subfolder"),
    "pretrained_transformer_subfolder": _subfolder,
    "pretrained_gemma_model_name_or_path": _part("text_encoder"),
    "pretrained_vae_model_name_or_path": _part("vae"),
    "init_lora": _input_file("adapter.init_from"),
    "validation_prompt": _validation_prompt, "validation_disable": _validation_disable,
    "validation_negative_prompt": to("validation.negative_prompt"),
    "validation_guidance": to("validation.guidance", "float"),
    "validation_guidance_rescale": to("validation.guidance_rescale", "float"),
    "validation_num_inference_steps": to("validation.steps", "int"),
    "validation_seed": to("validation.seed", "int"),
    "validation_step_interval": to("validation.every_n_steps", "int"),
    "validation_steps": to("validation.every_n_steps", "int", "SimpleTuner's older name of validation_step_interval"),
    "validation_disable_unconditional": to("validation.disable_unconditional", "bool"),
    "validation_resolution": _validation_resolution, "validation_prompt_library": _prompt_library,
    "user_prompt_library": _input_file("validation.prompt_library"),
    "validation_noise_scheduler": _noise_scheduler, "evaluation_type": _evaluation_type,
    "pretrained_evaluation_model_name_or_path": _evaluation_model, "eval_steps_interval": _eval_interval,
    "output_dir": _output_dir("save.output_dir"),
    "checkpointing_steps": to("save.every_n_steps", "int"),
    "checkpoint_step_interval": to("save.every_n_steps", "int"),
    "checkpoints_total_limit": to("save.keep_last", "int"),
    "resume_from_checkpoint": _resume, "lora_format": _lora_format,
    "push_to_hub": to("hub.push", "bool"), "push_checkpoints_to_hub": to("hub.push_checkpoints", "bool"),
    "hub_model_id": _hub_model_id, "model_card_private": to("hub.private", "bool"),
    "report_to": _report_to, "tracker_project_name": to("tracking.project"),
    "tracker_run_name": to("tracking.run_name"), "logging_dir": _output_dir("tracking.log_dir"),
    "vae_batch_size": to("cache.vae_batch_size", "int"),
    "text_encoder_batch_size": to("cache.encode_batch_size", "int"),
    "tokenizer_max_length": to("cache.max_caption_tokens", "int"),
    "vae_cache_disable": to("cache.vae_cache_disable", "bool"),
    "cache_dir_text": _cache_dir,
}

# handled after the others because they read what those set (output_dir, hub_model_id, the datasets)
LATE = ("resume_from_checkpoint", "cache_dir_text")
