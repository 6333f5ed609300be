"""ComfyUI's built-in TrainLoraNode, executed the way ComfyUI executes a node, on our weights and inputs.

The MODEL comes from `comfy.sd.load_diffusion_model_state_dict` (the UNETLoader node's code) over the bench's
state dict, the LATENT is `{"samples": latents}`, the CONDITIONING one `[features, {"attention_mask": ...}]`
pair per sample (what CLIPTextEncode gives for each caption). A V3 node (ComfyUI 0.33.0) runs through
`PREPARE_CLASS_CLONE` + `EXECUTE_NORMALIZED` with list inputs when the schema says `is_input_list`; a V1 node
(0.3.64) through its FUNCTION; both under `torch.inference_mode()`, as ComfyUI's executor does. The node's
own defaults fill every widget a setting leaves out. Imports ComfyUI only inside `import_comfyui`.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import Lumina2TrainError


class PeerError(Lumina2TrainError):
    """A peer cannot run with this setting or tree."""


@dataclass(frozen=True)
class NodeSetting:
    """One way to run TrainLoraNode: widget values over the node's defaults, and how the MODEL is loaded."""

    label: str
    widgets: dict = field(default_factory=dict)  # batch_size, grad_accumulation_steps, bypass_mode, ...
    quantized: bool = False  # Linear weights as ComfyUI's fp8 (float8_e4m3fn, per-tensor scale) checkpoint


def import_comfyui(root: str, *, cpu: bool) -> SimpleNamespace:
    """ComfyUI's modules from the tree at `root` (in this process; one tree per process)."""
    root = str(Path(root).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args

    args.cpu = cpu
    importlib.import_module("utils.extra_config")  # as main.py: ComfyUI's utils package before comfy/utils.py
    import comfy.model_management
    import comfy.sd
    import comfy_extras.nodes_train as nodes_train

    import nodes  # noqa: F401  (ComfyUI's node registry, imported before any node runs)

    version = ""
    version_file = Path(root) / "comfyui_version.py"
    if version_file.is_file():
        version = next((line.split("=")[1].strip().strip("\"'") for line in version_file.read_text().splitlines()
                        if line.startswith("__version__")), "")
    return SimpleNamespace(sd=comfy.sd, mm=comfy.model_management, nodes_train=nodes_train, version=version)


def quantize_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Block Linear weights as a ComfyUI fp8 checkpoint: float8_e4m3fn values, a per-tensor `weight_scale`
    (amax / 448) and the `comfy_quant` layer config that ComfyUI's mixed-precision ops load."""
    out = {}
    conf = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode("utf-8")), dtype=torch.uint8)
    for key, w in state.items():
        block = key.startswith(("layers.", "noise_refiner.", "context_refiner."))
        if block and key.endswith(".weight") and w.ndim == 2:
            scale = w.float().abs().amax().clamp(min=1e-12) / 448.0
            out[key] = (w.float() / scale).to(torch.float8_e4m3fn)
            layer = key[: -len(".weight")]
            out[f"{layer}.weight_scale"] = scale.reshape(())
            out[f"{layer}.comfy_quant"] = conf.clone()
        else:
            out[key] = w
    return out


def load_model(comfy: SimpleNamespace, native: dict[str, torch.Tensor], *, quantized: bool, folder: Path | None = None):
    """A MODEL (ModelPatcher) over the bench's weights in ComfyUI's layout, as UNETLoader builds it.

    With `folder`, the state dict is written there as a safetensors file and loaded by
    `comfy.sd.load_diffusion_model(path)`, UNETLoader's own call: ComfyUI 0.33.0's TrainLoraNode clones the MODEL
    with `force_deepcopy`, which reloads it through the `cached_patcher_init` that only the file loader records
    (a MODEL from `load_diffusion_model_state_dict` makes that clone raise). Without `folder`, or on a ComfyUI
    without the file loader, the state dict is loaded directly."""
    sd = {k: v.detach().cpu() for k, v in native.items()}
    dim = sd["x_embedder.weight"].shape[0]
    sd.setdefault("norm_final.weight", torch.ones(dim, dtype=torch.bfloat16))  # in every Lumina2 checkpoint
    if quantized:
        sd = quantize_fp8(sd)
    if folder is not None and hasattr(comfy.sd, "load_diffusion_model"):
        from safetensors.torch import save_file

        path = Path(folder) / ("comfy_unet_fp8.safetensors" if quantized else "comfy_unet.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        del sd
        return comfy.sd.load_diffusion_model(str(path), model_options={})
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={})
    if model is None:
        raise PeerError("ComfyUI did not recognise the bench's state dict as a diffusion model")
    return model


def conditioning(cap_feats: torch.Tensor) -> list:
    """One CONDITIONING pair per sample: (1, L, D) float32 features and an all-ones attention mask."""
    feats = cap_feats.detach().float().cpu()
    return [[feats[i : i + 1], {"pooled_output": None,
                                "attention_mask": torch.ones(1, feats.shape[1], dtype=torch.long)}]
            for i in range(feats.shape[0])]


def node_defaults(node_cls) -> dict:
    """Every widget of TrainLoraNode at its default (V3 schema or V1 INPUT_TYPES)."""
    if hasattr(node_cls, "GET_SCHEMA"):
        return {i.id: i.default for i in node_cls.GET_SCHEMA().inputs if getattr(i, "default", None) is not None}
    req = node_cls.INPUT_TYPES()["required"]
    return {k: spec[1]["default"] for k, spec in req.items() if len(spec) > 1 and "default" in spec[1]}


def execute(node_cls, inputs: dict):
    """Run the node as ComfyUI's executor does (V3 class clone or V1 instance), under inference mode."""
    with torch.inference_mode():
        if hasattr(node_cls, "PREPARE_CLASS_CLONE"):
            clone = node_cls.PREPARE_CLASS_CLONE(None)
            listed = node_cls.GET_SCHEMA().is_input_list
            return clone.EXECUTE_NORMALIZED(**({k: [v] for k, v in inputs.items()} if listed else inputs))
        return getattr(node_cls(), node_cls.FUNCTION)(**inputs)


def node_inputs(node_cls, model, latents: torch.Tensor, cap_feats: torch.Tensor, setting: NodeSetting,
                steps: int, rank: int) -> dict:
    """The node's inputs: its defaults, the dataset, then the setting's widgets."""
    widgets = node_defaults(node_cls)
    known = set(widgets) | {"model", "latents", "positive"}
    unknown = sorted(set(setting.widgets) - known)
    if unknown:
        raise PeerError(f"TrainLoraNode here has no widget {unknown} (setting '{setting.label}'); "
                        "this ComfyUI's trainer predates it")
    widgets.update(rank=rank, steps=steps, seed=0, existing_lora="[None]")
    widgets.update(setting.widgets)
    return {**widgets, "model": model, "latents": {"samples": latents.detach().float().cpu()},
            "positive": conditioning(cap_feats)}


def forward_batch_sizes(model) -> tuple[list[int], object]:
    """Record the batch size of every diffusion-model forward (shows how ComfyUI batches the conds)."""
    seen: list[int] = []
    handle = model.model.diffusion_model.register_forward_pre_hook(
        lambda _m, args, kwargs=None: seen.append(int(args[0].shape[0])) if args else None)
    return seen, handle


def loss_of(out) -> float:
    """The last loss from the node's LOSS_MAP output (V1 tuple or V3 NodeOutput)."""
    values = getattr(out, "result", out)
    for v in values:
        if isinstance(v, dict) and isinstance(v.get("loss"), list) and v["loss"]:
            return float(v["loss"][-1])
    return float("nan")
