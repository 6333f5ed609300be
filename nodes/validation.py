"""3 Train: Validation Settings -> LUMINA2T_VALIDATION (previews during training, held-out loss)."""

from __future__ import annotations

from ..lumina2_train.comfyui import data as comfy_data
from ..lumina2_train.config import ValidationConfig
from ..lumina2_train.errors import ConfigError
from . import types
from ._api import advanced, io
from .adapter import CATEGORY, check_config

_V = ValidationConfig()
_SIGMAS = ", ".join(f"{s:g}" for s in _V.eval_sigmas)


class ConfigureValidation(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_ConfigureValidation", display_name="Validation Settings (Lumina2)", category=CATEGORY,
            description="Sample images during training (previews on the Train node, PNGs in the run folder) and, "
                        "optionally, a held-out loss. Connect it to the Train node AND to 'Cache Latents & Text', "
                        "which encodes its prompts.",
            inputs=[
                io.String.Input("prompts", default="", multiline=True,
                                tooltip="Validation prompts, one per line (captions as in your dataset; the cache's "
                                        "system prompt is added)."),
                io.String.Input("prompt_library", default="",
                                tooltip="Optional JSON file {\"name\": \"prompt\", ...} (absolute or relative to "
                                        "ComfyUI's input folder); its prompts join the ones above."),
                io.String.Input("negative_prompt", default=_V.negative_prompt, multiline=True,
                                tooltip="Negative prompt for classifier-free guidance (empty = unconditional)."),
                io.Float.Input("guidance", default=_V.guidance, min=0.0, max=100.0, step=0.1,
                               tooltip="CFG scale, as KSampler's cfg (Lumina2's templates use 4)."),
                io.Float.Input("cfg_renorm", default=_V.cfg_renorm, min=0.0, max=100.0, step=0.01,
                               tooltip="Cap the guided prediction's norm at this times the conditional one (as "
                                       "RenormCFG's renorm_cfg); 0 = off."),
                io.Float.Input("cfg_trunc", default=_V.cfg_trunc, min=0.0, max=1.0, step=0.01,
                               tooltip="Apply guidance only while 1 - sigma is below this (1.0 = always; Lumina2's "
                                       "reference uses 0.25)."),
                io.Int.Input("steps", default=_V.steps, min=1, max=1000, tooltip="Sampling steps (flow Euler)."),
                io.Float.Input("shift", default=_V.shift, min=0.01, max=100.0, step=0.1,
                               tooltip="Timestep shift, as ModelSamplingAuraFlow's (6 for Lumina2)."),
                io.Int.Input("seed", default=_V.seed, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Noise seed of the first prompt (the next prompts use seed+1, ...)."),
                io.Int.Input("width", default=_V.width, min=16, max=4096, step=16, tooltip="Sample width in px."),
                io.Int.Input("height", default=_V.height, min=16, max=4096, step=16, tooltip="Sample height in px."),
                io.Int.Input("every_n_steps", default=_V.every_n_steps, min=0, max=1_000_000,
                             tooltip="Sample every N steps; 0 = only before and after training."),
                advanced(io.Boolean.Input("use_ema", default=_V.use_ema,
                                          tooltip="Sample with the EMA weights (when the Train node keeps an EMA).")),
                advanced(io.Int.Input("eval_every_n_steps", default=_V.eval_every_n_steps, min=0, max=1_000_000,
                                      tooltip="Held-out loss at fixed noise levels every N steps; 0 = off.")),
                advanced(io.Int.Input("eval_holdout", default=_V.eval_holdout, min=0, max=100_000,
                                      tooltip="Images kept out of training for the held-out loss.")),
                advanced(io.String.Input("clip_model", default="",
                                         tooltip="Optional local transformers CLIP folder: scores each sample "
                                                 "against its prompt (CLIP score); empty = off.")),
                # added after the others (optional): saved workflows keep their widget positions
                advanced(io.Float.Input("guidance_rescale", default=_V.guidance_rescale, min=0.0, max=1.0, step=0.01,
                                        optional=True,
                                        tooltip="Rescale the guided prediction's spread towards the conditional "
                                                "one's (0 = off; 0.7 in the 'Common Diffusion Noise Schedules' "
                                                "paper).")),
                advanced(io.Boolean.Input("disable_unconditional", default=_V.disable_unconditional, optional=True,
                                          tooltip="Sample without the unconditional pass (no CFG; faster).")),
                advanced(io.String.Input("eval_sigmas", default=_SIGMAS, optional=True,
                                         tooltip="Noise levels (0 < sigma < 1, comma-separated) of the held-out "
                                                 "loss.")),
            ],
            outputs=[types.Validation.Output("validation", display_name="validation",
                                             tooltip="For the Train node and for 'Cache Latents & Text'.")],
        )

    @classmethod
    def fingerprint_inputs(cls, prompt_library: str = "", **_widgets) -> str:
        """Re-run when the prompt library file changes (other widgets are compared by ComfyUI anyway)."""
        return comfy_data.folder_fingerprint(comfy_data.input_folder(prompt_library)) if prompt_library.strip() \
            else ""

    @classmethod
    def execute(cls, prompts: str, prompt_library: str, clip_model: str, eval_sigmas: str = _SIGMAS,
                **widgets) -> io.NodeOutput:
        lines = tuple(p.strip() for p in prompts.splitlines() if p.strip())
        library = str(comfy_data.input_folder(prompt_library)) if prompt_library.strip() else ""
        cfg = ValidationConfig(prompts=lines, prompt_library=library, clip_model=clip_model.strip(),
                               evaluation_type="clip" if clip_model.strip() else "none",
                               eval_sigmas=parse_sigmas(eval_sigmas), **widgets)
        return io.NodeOutput(check_config(cfg, "validation"))


def parse_sigmas(text: str) -> tuple[float, ...]:
    """'0.1, 0.5' -> (0.1, 0.5) ('' = the default levels); ConfigError naming the widget for anything else."""
    if not text.strip():
        return _V.eval_sigmas
    try:
        return tuple(float(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"eval_sigmas: '{text}' is not a list of numbers. Write noise levels like "
                          "'0.1, 0.3, 0.5'") from None


NODES = [ConfigureValidation]
