"""What a run produces and reports: validation and evaluation, saved files, trackers, Hub upload."""

from __future__ import annotations

from dataclasses import dataclass

from ..storage.paths import name_problem
from .choices import LORA_FORMATS, SAVE_DTYPES, _choice, _range


@dataclass(frozen=True)
class ValidationConfig:
    prompts: tuple[str, ...] = ()
    negative_prompt: str = ""
    guidance: float = 4.0
    cfg_renorm: float = 1.0  # 0 = off; else cap ‖guided‖ at cfg_renorm·‖cond‖ (official renorm_cfg)
    cfg_trunc: float = 1.0  # guidance only while t = 1 − σ < cfg_trunc; 1.0 = always (official 0.25)
    guidance_rescale: float = 0.0
    disable_unconditional: bool = False
    steps: int = 20
    shift: float = 6.0
    seed: int = 0
    width: int = 1024
    height: int = 1024
    every_n_steps: int = 0  # 0 = only before and after training
    use_ema: bool = False
    prompt_library: str = ""  # a JSON file {"name": "prompt", ...}; its prompts join `prompts`
    evaluation_type: str = "none"  # none | clip (CLIP score of each validation image against its prompt)
    clip_model: str = ""  # a local transformers CLIP folder, for evaluation_type 'clip'
    eval_every_n_steps: int = 0  # held-out loss at fixed σ bins; 0 = off
    eval_holdout: int = 0  # items (after repeats are ignored) kept out of training for the held-out loss
    eval_sigmas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)

    def errors(self, at: str = "validation") -> list[str]:
        out = _range(f"{at}.guidance", self.guidance, 0.0, 100.0)
        out += _range(f"{at}.cfg_renorm", self.cfg_renorm, 0.0, 100.0)
        out += _range(f"{at}.cfg_trunc", self.cfg_trunc, 0.0, 1.0)
        out += _range(f"{at}.guidance_rescale", self.guidance_rescale, 0.0, 1.0)
        out += _range(f"{at}.steps", self.steps, 1, 1000)
        out += _range(f"{at}.shift", self.shift, 0.01, 100.0)
        out += _range(f"{at}.every_n_steps", self.every_n_steps, 0)
        out += _choice(f"{at}.evaluation_type", self.evaluation_type, ("none", "clip"))
        out += _range(f"{at}.eval_every_n_steps", self.eval_every_n_steps, 0)
        out += _range(f"{at}.eval_holdout", self.eval_holdout, 0)
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
    output_dir: str = "output/lumina2_train"
    name: str = "lumina2_lora"
    format: str = "comfyui"
    dtype: str = "bf16"
    every_n_steps: int = 0  # resumable checkpoint + LoRA file every N steps; 0 = only at the end
    keep_last: int = 2  # checkpoints kept (older ones are deleted; LoRA files are kept)
    save_ema: bool = True  # with train.use_ema: the LoRA file holds the EMA weights (else the raw ones)

    def errors(self, at: str = "save") -> list[str]:
        out = _choice(f"{at}.format", self.format, LORA_FORMATS)
        out += _choice(f"{at}.dtype", self.dtype, SAVE_DTYPES)
        out += _range(f"{at}.every_n_steps", self.every_n_steps, 0)
        out += _range(f"{at}.keep_last", self.keep_last, 1)
        problem = name_problem(self.name, f"{at}.name")  # absolute, '..', reserved, invisible characters, ...
        if problem or "\\" in self.name:
            out.append(problem or f"{at}.name '{self.name}' holds '\\'; use '/' between subfolders")
        return out


REPORT_TO = ("tensorboard", "wandb", "none")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment trackers fed by train/trackers.py (hooks); none by default."""

    report_to: tuple[str, ...] = ()  # tensorboard | wandb (offline without network); () or "none" = no tracker
    project: str = "lumina2-train"
    run_name: str = ""  # "" = the run folder's name
    log_every_n_steps: int = 1
    log_dir: str = ""  # tensorboard / wandb files; "" = <run folder>/logs

    def errors(self, at: str = "tracking") -> list[str]:
        out = [e for r in self.report_to for e in _choice(f"{at}.report_to", r, REPORT_TO)]
        out += _range(f"{at}.log_every_n_steps", self.log_every_n_steps, 1)
        if "none" in self.report_to and len(self.report_to) > 1:
            out.append(f"{at}.report_to mixes 'none' with trackers (got {list(self.report_to)}); keep one")
        return out


@dataclass(frozen=True)
class HubConfig:
    """Upload to the Hugging Face Hub after the run (hub.py); the local files are always written first."""

    push: bool = False  # LoRA, model card (README.md), samples and config after training
    push_checkpoints: bool = False  # also each intermediate checkpoint and LoRA as it is saved
    model_id: str = ""  # "user/name", or "name" under your account
    private: bool = False

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
