"""3 Train: Configure Adapter -> LUMINA2T_ADAPTER (LoRA / LoHa / LoKr / DoRA / full fine-tune settings and target
layers)."""

from __future__ import annotations

import folder_paths

from ..lumina2_train.config import LORA_INITS, TARGET_GROUPS, AdapterConfig
from ..lumina2_train.errors import ConfigError
from . import types
from ._api import advanced, io

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
                io.Combo.Input("kind", options=["lora", "loha", "lokr", "full"], default=_A.kind,
                               tooltip="lora: low-rank pair per layer. loha: Hadamard product of two pairs. lokr: "
                                       "Kronecker product (very small files). All load in stock ComfyUI. full: train "
                                       "the chosen layers' weights themselves (a copy; the MODEL is never changed) "
                                       "and save the whole model to models/diffusion_models for Load Diffusion "
                                       "Model; rank, alpha, dropout, init, DoRA and init_from do not apply, and "
                                       "with no target ticked every layer trains."),
                io.Int.Input("rank", default=_A.rank, min=1, max=1024, tooltip="Rank (dimension) of the adapter."),
                io.Float.Input("alpha", default=_A.alpha, min=0.0, max=4096.0, step=0.5,
                               tooltip="Scale = alpha / rank. alpha = rank trains at scale 1."),
                io.Float.Input("dropout", default=_A.dropout, min=0.0, max=0.99, step=0.01,
                               tooltip="Dropout on the adapter's input during training (0 = off)."),
                io.Combo.Input("init", options=list(LORA_INITS), default=_A.init,
                               tooltip="default: PEFT's init (kaiming down, zero up). gaussian: N(0, 1/rank) down."),
                *[io.Boolean.Input(f"target_{g}", default=g in _A.targets,
                                   tooltip=f"Train {tip}. (kind full: none ticked = every layer.)")
                  for g, tip in _GROUP_TIPS.items()],
                io.String.Input("blocks", default=_A.blocks,
                                tooltip="Main blocks to adapt: 'all', or indices and ranges like '0-12,20,25' "
                                        "(Lumina2 has 26, numbered 0-25)."),
                io.Boolean.Input("refiners", default=_A.refiners,
                                 tooltip="Also adapt the 2 noise and 2 context refiner blocks."),
                io.Boolean.Input("use_dora", default=_A.use_dora,
                                 tooltip="DoRA: learn a per-column magnitude besides the direction (LoRA only)."),
                advanced(io.Int.Input("lokr_factor", default=_A.lokr_factor, min=-1, max=1024,
                                      tooltip="LoKr: the factor of the Kronecker split; -1 = as square as "
                                              "possible.")),
                io.Combo.Input("init_from", options=[NO_LORA, *folder_paths.get_filename_list("loras")],
                               default=NO_LORA,
                               tooltip="Continue from a LoRA in models/loras (ComfyUI, kohya, diffusers or "
                                       "diffusion-pipe files) instead of a fresh adapter."),
            ],
            outputs=[types.Adapter.Output("adapter", display_name="adapter",
                                          tooltip="The adapter settings, for the Train node.")],
        )

    @classmethod
    def execute(cls, init_from: str, **widgets) -> io.NodeOutput:
        targets = tuple(g for g in TARGET_GROUPS if widgets.pop(f"target_{g}"))
        path = "" if init_from == NO_LORA else folder_paths.get_full_path_or_raise("loras", init_from)
        return io.NodeOutput(check_config(AdapterConfig(targets=targets, init_from=path, **widgets), "adapter"))


NODES = [ConfigureAdapter]
