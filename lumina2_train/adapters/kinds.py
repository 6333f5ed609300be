"""The adapter kinds and each one's output policy: the one place that knows how a LoRA, DoRA, LoHa, LoKr and a
full fine-tune differ outside their modules (what file is written, into which ComfyUI folder, how the Train
node's MODEL output is patched, which save formats hold it, whether several processes shard it).

Code elsewhere asks `kind_of(cfg.adapter)` and reads a field; it never compares kind names. Pure Python (no torch),
so config validation can use it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ADAPTER_FILE_FORMATS = ("comfyui", "kohya", "diffusers")  # what formats.py writes for a plain LoRA
COMFY_LOADABLE = ("comfyui", "kohya")  # the formats ComfyUI's LoRA loaders read (the Train node writes these)


@dataclass(frozen=True)
class AdapterKind:
    """How one kind of adapter is trained, saved and used."""

    name: str  # the config's adapter.kind ('dora': kind 'lora' with use_dora)
    title: str  # what it is called in messages and node titles
    layout: str  # its file: 'lora' (down/up: ComfyUI, kohya and diffusers files; reads any LoRA format),
    # 'comfyui' (ComfyUI's suffixes for this kind: comfyui files only), 'model' (the whole fine-tuned DiT)
    comfy_folder: str  # the ComfyUI models folder the Train node writes the file into
    model_patch: str  # the Train node's MODEL output: 'file' patches in the saved file's tensors; 'diff' patches
    # in the .diff from the input MODEL's weights to the saved file's
    shards: bool  # its weights and optimizer states checkpoint through DCP, sharded with FSDP2 on several processes
    needs_targets: bool  # adapter.targets must name at least one group
    diffusers_folder: bool  # the run folder also gets a diffusers `transformer/` folder
    card_name: str  # the model card's first words
    hub_tags: tuple[str, ...]
    hub_relation: str  # the model card's base_model_relation
    lycoris_algo: str = ""  # the ss_network_args algo of kohya-style metadata; '' for a plain LoRA
    additive: bool = True  # its output adds to the base Linear's, whatever the base weight is, so a frozen
    # training adapter (adapter.training_adapter) can sit under it and be left out of the saved file; DoRA
    # rescales the base weight it was trained on and a full fine-tune saves the whole weight

    @property
    def writes_model(self) -> bool:
        """The output is the whole fine-tuned DiT (UNETLoader's file), not an adapter file."""
        return self.layout == "model"

    @property
    def save_formats(self) -> tuple[str, ...] | None:
        """The save.format values that hold it; None: save.format is not used (the file is the model's)."""
        return {"lora": ADAPTER_FILE_FORMATS, "comfyui": ("comfyui",)}.get(self.layout)

    @property
    def init_from(self) -> str:
        """What adapter.init_from may name: 'any' LoRA format formats.py reads, a 'comfyui' file, '' nothing."""
        return {"lora": "any", "comfyui": "comfyui"}.get(self.layout, "")


KINDS: dict[str, AdapterKind] = {k.name: k for k in (
    AdapterKind("lora", "LoRA", "lora", "loras", "file", False, True, False, "A LoRA", ("lora",), "adapter"),
    AdapterKind("dora", "DoRA", "comfyui", "loras", "file", False, True, False, "A LoRA", ("lora",), "adapter",
                lycoris_algo="lora", additive=False),
    AdapterKind("loha", "LoHa", "comfyui", "loras", "file", False, True, False, "A LoHa",
                ("lora", "lycoris", "loha"), "adapter", lycoris_algo="loha"),
    AdapterKind("lokr", "LoKr", "comfyui", "loras", "file", False, True, False, "A LoKr",
                ("lora", "lycoris", "lokr"), "adapter", lycoris_algo="lokr"),
    AdapterKind("full", "full fine-tune", "model", "diffusion_models", "diff", True, False, True,
                "A full fine-tune", ("full-finetune",), "finetune", additive=False),
)}


def kind_of(adapter) -> AdapterKind:
    """The kind of an AdapterConfig (DoRA is kind 'lora' with use_dora).

    Raises:
        KeyError: adapter.kind is not a known kind (config validation reports it first).
    """
    if adapter.kind == "lora" and adapter.use_dora:
        return KINDS["dora"]
    return KINDS[adapter.kind]


def network_metadata(adapter) -> dict[str, str]:
    """kohya-style network keys for LyCORIS/DoRA files (plain LoRA keeps networks.lora)."""
    kind = kind_of(adapter)
    if not kind.lycoris_algo:
        return {}
    args = {"algo": kind.lycoris_algo, "dora_wd": adapter.use_dora,
            **({"factor": adapter.lokr_factor} if kind.name == "lokr" else {})}
    return {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args)}


def describe(adapter) -> tuple[str, str]:
    """(what is trained, which layers) for the model card."""
    if kind_of(adapter).writes_model:
        return "full fine-tune", "all weights"
    return (f"{adapter.kind}, rank {adapter.rank}, alpha {adapter.alpha:g}",
            ", ".join(adapter.targets) + f" (blocks {adapter.blocks})")


__all__ = ["ADAPTER_FILE_FORMATS", "COMFY_LOADABLE", "KINDS", "AdapterKind", "describe", "kind_of",
           "network_metadata"]
