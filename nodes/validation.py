"""3 Train: Validation Settings -> LUMINA2T_VALIDATION (previews during training, held-out loss)."""

from __future__ import annotations

from ..lumina2_train.comfyui import data as comfy_data
from ..lumina2_train.config import ValidationConfig
from ..lumina2_train.errors import ConfigError
from . import types
from ._api import advanced, io, widget
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
                widget(ValidationConfig, "prompt_library",
                       tooltip="Optional JSON file {\"name\": \"prompt\", ...} (absolute or relative to ComfyUI's "
                               "input folder); its prompts join the ones above."),
                widget(ValidationConfig, "negative_prompt", multiline=True),
                *[widget(ValidationConfig, n) for n in ("guidance", "cfg_renorm", "cfg_trunc", "steps", "shift")],
                widget(ValidationConfig, "seed", control_after_generate=False),
                *[widget(ValidationConfig, n) for n in ("width", "height", "every_n_steps")],
                *[advanced(widget(ValidationConfig, n))
                  for n in ("use_ema", "eval_every_n_steps", "eval_holdout", "clip_model")],
                # added after the others (optional): saved workflows keep their widget positions
                *[advanced(widget(ValidationConfig, n, optional=True))
                  for n in ("guidance_rescale", "disable_unconditional")],
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
