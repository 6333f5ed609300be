"""3 Train: Configure Adapter -> LUMINA2T_ADAPTER (LoRA / LoHa / LoKr / DoRA / full fine-tune settings and target
layers)."""

from __future__ import annotations

import folder_paths

from ..lumina2_train.config import TARGET_GROUPS, AdapterConfig
from ..lumina2_train.errors import ConfigError
from . import types
from ._api import advanced, io, widget

CATEGORY = "Lumina2 Trainer/3 Train"
NO_LORA = "(none)"
_A = AdapterConfig()
_GROUP_TIPS = {
    "attention": "the attention projections (fused qkv, out) of every selected block",
    "ffn": "the SwiGLU feed-forward (w1, w2, w3) of every selected block",
    "adaln": "each block's adaLN modulation (timestep conditioning)",
    "final": "the final layer (linear + its adaLN)",
    "embedders": "the patch, timestep and caption embedders",
}


def check_config(cfg, at: str):
    errors = cfg.errors(at)
    if errors:
        raise ConfigError(errors)
    return cfg


class ConfigureAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_ConfigureAdapter", display_name="Configure Adapter (Lumina2)", category=CATEGORY,
            description="LoRA / LoHa / LoKr (+ DoRA) settings, or a full fine-tune, and which layers to train. "
                        "Feeds the Train node.",
            inputs=[
                *[widget(AdapterConfig, name) for name in ("kind", "rank", "alpha", "dropout", "init")],
                *[io.Boolean.Input(f"target_{g}", default=g in _A.targets,
                                   tooltip=f"Train {tip}. (kind full: none ticked = every layer.)")
                  for g, tip in _GROUP_TIPS.items()],
                *[widget(AdapterConfig, name) for name in ("blocks", "refiners", "use_dora")],
                advanced(widget(AdapterConfig, "lokr_factor")),
                io.Combo.Input("init_from", options=[NO_LORA, *folder_paths.get_filename_list("loras")],
                               default=NO_LORA,
                               tooltip="Continue from a LoRA in models/loras (ComfyUI, kohya, diffusers or "
                                       "diffusion-pipe files) instead of a fresh adapter."),
                # added after the previous release: last and optional (docs/architecture.md, "Old files keep working")
                io.Combo.Input("training_adapter", options=[NO_LORA, *folder_paths.get_filename_list("loras")],
                               default=NO_LORA, optional=True,
                               tooltip="A LoRA in models/loras used under the trained one for this run only, never "
                                       "saved into it nor in the previews: for Z-Image-Turbo, a de-distillation "
                                       "LoRA. LoRA, LoHa and LoKr only."),
            ],
            outputs=[types.Adapter.Output("adapter", display_name="adapter",
                                          tooltip="The adapter settings, for the Train node.")],
        )

    @classmethod
    def execute(cls, init_from: str, training_adapter: str = NO_LORA, **widgets) -> io.NodeOutput:
        targets = tuple(g for g in TARGET_GROUPS if widgets.pop(f"target_{g}"))
        paths = {name: "" if value == NO_LORA else folder_paths.get_full_path_or_raise("loras", value)
                 for name, value in (("init_from", init_from), ("training_adapter", training_adapter))}
        return io.NodeOutput(check_config(AdapterConfig(targets=targets, **paths, **widgets), "adapter"))


NODES = [ConfigureAdapter]
