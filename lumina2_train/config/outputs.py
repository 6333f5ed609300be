"""What a run produces and reports: validation and evaluation, saved files, trackers, Hub upload."""

from __future__ import annotations

from dataclasses import dataclass

from ..storage.paths import name_problem
from .choices import EVALUATION_TYPES, LORA_FORMATS, SAVE_DTYPES, SEED_MAX
from .settings import setting, setting_errors
from .train import BIG


@dataclass(frozen=True)
class ValidationConfig:
    prompts: tuple[str, ...] = setting((), "Validation prompts, one per line (captions as in your dataset; the "
                                           "cache's system prompt is added).")
    negative_prompt: str = setting("", "Negative prompt for classifier-free guidance. Empty = the dropped caption "
                                       "\"\" without the system prompt, as caption dropout and the official sampler "
                                       "use.")
    guidance: float = setting(4.0, "CFG scale, as KSampler's cfg (Lumina2's templates use 4).", min=0.0,
                              max=100.0, step=0.1)
    cfg_renorm: float = setting(1.0, "Cap the guided velocity's norm at this times the conditional one (the "
                                     "official renorm_cfg; ComfyUI's RenormCFG caps the x0 prediction instead); "
                                     "0 = off.", min=0.0, max=100.0, step=0.01)
    cfg_trunc: float = setting(1.0, "Apply guidance only while 1 - sigma is below this (1.0 = always, as the "
                                    "official sampler; its demo uses 0.25).", min=0.0, max=1.0, step=0.01)
    guidance_rescale: float = setting(0.0, "Rescale the guided prediction's spread towards the conditional one's "
                                           "(0 = off; 0.7 in the 'Common Diffusion Noise Schedules' paper).",
                                      min=0.0, max=1.0, step=0.01)
    disable_unconditional: bool = setting(False, "Sample without the unconditional pass (no CFG; faster).")
    steps: int = setting(20, "Sampling steps (flow Euler).", min=1, max=1000)
    shift: float = setting(6.0, "Timestep shift, as ModelSamplingAuraFlow's (6 for Lumina2).", min=0.01,
                           max=100.0, step=0.1)
    seed: int = setting(0, "Noise seed of the first prompt (the next prompts use seed+1, ...).", widget_min=0,
                        widget_max=SEED_MAX)
    # width / height: checked as multiples of 16 in errors()
    width: int = setting(1024, "Sample width in px.", widget_min=16, widget_max=4096, step=16)
    height: int = setting(1024, "Sample height in px.", widget_min=16, widget_max=4096, step=16)
    every_n_steps: int = setting(0, "Sample every N steps; 0 = only before and after training.", min=0,
                                 widget_max=1_000_000)
    use_ema: bool = setting(False, "Sample with the EMA weights (when the Train node keeps an EMA).")
    prompt_library: str = setting("", "Optional JSON file {\"name\": \"prompt\", ...}; its prompts join the "
                                      "ones above.")
    evaluation_type: str = setting("none", "none | clip (CLIP score of each validation image against its prompt).",
                                   choices=EVALUATION_TYPES)
    clip_model: str = setting("", "Optional local transformers CLIP folder: scores each sample against its prompt "
                                  "(CLIP score); empty = off.")
    eval_every_n_steps: int = setting(0, "Held-out loss at fixed noise levels every N steps; 0 = off.", min=0,
                                      widget_max=1_000_000)
    # counted before repeats
    eval_holdout: int = setting(0, "Images kept out of training for the held-out loss.", min=0,
                                widget_max=100_000)
    eval_sigmas: tuple[float, ...] = setting((0.1, 0.3, 0.5, 0.7, 0.9), "Noise levels (0 < sigma < 1, "
                                                                         "comma-separated) of the held-out loss.")

    def errors(self, at: str = "validation") -> list[str]:
        out = setting_errors(self, at)
        if self.evaluation_type == "clip" and not self.clip_model:
            out.append(f"{at}.clip_model is empty but evaluation_type is 'clip'; give a local CLIP model folder")
        if self.eval_every_n_steps and not self.eval_holdout:
            out.append(f"{at}.eval_holdout is 0 but eval_every_n_steps is set; hold out at least one image")
        if not all(0.0 < s < 1.0 for s in self.eval_sigmas):
            out.append(f"{at}.eval_sigmas must lie strictly between 0 and 1 (got {list(self.eval_sigmas)})")
        if self.prompt_library:
            from pathlib import Path

            if not Path(self.prompt_library).is_file():
                out.append(f"{at}.prompt_library '{self.prompt_library}' is not a file; give a JSON file "
                           '{"name": "prompt"}')
        for side in ("width", "height"):
            v = getattr(self, side)
            if v < 16 or v % 16:
                out.append(f"{at}.{side} must be a multiple of 16 and at least 16 (got {v})")
        return out


@dataclass(frozen=True)
class SaveConfig:
    output_dir: str = setting("output/lumina2_train", "Where run folders are written.")
    name: str = setting("lumina2_lora", "The file's and the run folder's name (a subfolder like 'chars/alice' is "
                                        "allowed).")
    format: str = setting(
        "comfyui", "comfyui (native names, loads in ComfyUI), kohya (lora_unet_*, loads in ComfyUI and kohya tools) "
        "or diffusers (transformer.*, qkv split: for diffusers' Lumina2Pipeline; ComfyUI cannot load it). "
        "LoHa/LoKr/DoRA and a full fine-tune's .diff patches: comfyui only.", choices=LORA_FORMATS)
    dtype: str = setting("bf16", "dtype of the saved file.", choices=SAVE_DTYPES)
    every_n_steps: int = setting(0, "Also write a resumable checkpoint and a LoRA file every N steps (in the run "
                                    "folder); 0 = only at the end.", min=0, widget_max=BIG)
    keep_last: int = setting(2, "Checkpoints kept in the run folder (LoRA files are all kept).", min=1,
                             widget_max=1000)
    save_ema: bool = setting(True, "With use_ema: the file holds the EMA weights.")

    def errors(self, at: str = "save") -> list[str]:
        out = setting_errors(self, at)
        problem = name_problem(self.name, f"{at}.name")  # absolute, '..', reserved, invisible characters, ...
        if problem or "\\" in self.name:
            out.append(problem or f"{at}.name '{self.name}' holds '\\'; use '/' between subfolders")
        return out


REPORT_TO = ("tensorboard", "wandb", "none")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment trackers fed by train/trackers.py (hooks); none by default."""

    report_to: tuple[str, ...] = setting(
        (), "tensorboard (pip install tensorboard), wandb (pip install wandb; offline when its server cannot be "
        "reached: upload later with `wandb sync`), both, or none. A missing package fails the run before any model "
        "loads.", choices=REPORT_TO)
    project: str = setting("lumina2-train", "W&B project name.")
    run_name: str = setting("", "Run name shown by the tracker; empty = the run folder's name.")
    log_every_n_steps: int = setting(1, "Log the step scalars every N optimizer steps (and at the last step).",
                                     min=1, widget_max=1_000_000)
    log_dir: str = setting("", "TensorBoard / W&B files; empty = <run folder>/logs.")

    def errors(self, at: str = "tracking") -> list[str]:
        out = setting_errors(self, at)
        if "none" in self.report_to and len(self.report_to) > 1:
            out.append(f"{at}.report_to mixes 'none' with trackers (got {list(self.report_to)}); keep one")
        return out


@dataclass(frozen=True)
class HubConfig:
    """Upload to the Hugging Face Hub after the run (hub.py); the local files are always written first."""

    push: bool = setting(False, "Upload after training. The files are always written locally first; if the "
                                "upload fails (offline, no login) the run fails with the command that uploads "
                                "them later.")
    push_checkpoints: bool = setting(False, "Also upload each intermediate checkpoint and file as it is saved "
                                            "(needs push; a failed intermediate upload only logs a warning).")
    model_id: str = setting("", "The repository: 'user/name', or 'name' under your account. Created if missing.")
    private: bool = setting(False, "Create the repository as private.")

    def errors(self, at: str = "hub") -> list[str]:
        import re

        out = []
        if (self.push or self.push_checkpoints) and not self.model_id:
            out.append(f"{at}.model_id is empty but {at}.push is set; give the repository, like 'me/my-lora'")
        if self.model_id and not re.fullmatch(r"[\w.-]{1,96}(/[\w.-]{1,96})?", self.model_id):
            out.append(f"{at}.model_id '{self.model_id}' is not a Hub repository name; use 'user/name' with "
                       "letters, digits, '-', '_' and '.'")
        if self.push_checkpoints and not self.push:
            out.append(f"{at}.push_checkpoints needs {at}.push; set both")
        return out
