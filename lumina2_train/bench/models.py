"""The bench's models: full-size Lumina2 with seeded random weights (nothing is downloaded), the reference
steps (diffusers + PEFT LoRA, and a plain full fine-tune) and our backbones over the same weights.
Imports diffusers and PEFT (only the bench and tests need them); never ComfyUI (see lumina2_train/comfyui/bench.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import recipe
from ..backbones import Backbone
from ..backbones.diffusers import DiffusersBackbone, arch_from_diffusers_config, native_tree_from_state
from ..backbones.keys import diffusers_state_to_native
from .cases import PEFT_TARGETS, TARGETS, Group

# Lumina-Image-2.0's transformer config (diffusers layout): 2,609,769,152 parameters
FULL_DIT = dict(sample_size=128, patch_size=2, in_channels=16, hidden_size=2304, num_layers=26, num_refiner_layers=2,
                num_attention_heads=24, num_kv_heads=8, multiple_of=256, ffn_dim_multiplier=None, norm_eps=1e-5,
                scaling_factor=1.0, axes_dim_rope=(32, 32, 32), axes_lens=(300, 512, 512), cap_feat_dim=2304)


def build_dit(config: dict, device, dtype=torch.bfloat16, state: dict | None = None):
    """A diffusers Lumina2Transformer2DModel on `device` in `dtype`, with `state` loaded when given."""
    from diffusers import Lumina2Transformer2DModel

    with torch.device(device):
        model = Lumina2Transformer2DModel(**config)
    model = model.to(dtype).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def random_weights(config: dict, device, seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Seeded random weights in diffusers' layout, bf16, on the CPU (pinned when CUDA is there).

    Linear weights ~ N(0, std²), biases 0, norm weights 1: activations keep a realistic scale through all
    blocks. Speed does not depend on the values; the parity check needs them non-trivial.
    """
    model = build_dit(config, device, torch.float32)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and "linear" not in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)
    pin = torch.cuda.is_available()
    out = {k: v.to(torch.bfloat16).to("cpu") for k, v in model.state_dict().items()}
    del model
    return {k: v.pin_memory() for k, v in out.items()} if pin else out


def native_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return diffusers_state_to_native(weights)


def diffusers_backbone(config: dict, native: dict[str, torch.Tensor], device) -> Backbone:
    """Our backbone over the weights (native layout, fused qkv), as DiffusersBackbone builds it."""
    ffn_hidden = native["layers.0.feed_forward.w1.weight"].shape[0] if config["num_layers"] else \
        native["noise_refiner.0.feed_forward.w1.weight"].shape[0]
    arch = arch_from_diffusers_config(config, ffn_hidden)
    tree = native_tree_from_state({k: v.to(device) for k, v in native.items()}, arch)
    return DiffusersBackbone(tree, arch, kind="diffusers")


def comfy_backbone(config: dict, native: dict[str, torch.Tensor], device, comfy_path: str) -> Backbone:
    """ComfyUI's own NextDiT class holding the same weights (built in lumina2_train/comfyui/bench.py)."""
    from ..comfyui.bench import comfy_backbone as build

    return build(config, native, device, comfy_path)


@dataclass
class Inputs:
    """One batch of cached-style inputs, on the device: scaled latents and Gemma-width caption features."""

    latents: torch.Tensor  # (B, 16, H/8, W/8)
    cap_feats: torch.Tensor  # (B, L, cap_feat_dim)
    res: int


def make_inputs(group: Group, config: dict, device, seed: int = 1) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    lat = torch.randn(group.batch, config["in_channels"], group.res // 8, group.res // 8, generator=gen)
    feats = torch.randn(group.batch, group.caption_tokens, config["cap_feat_dim"], generator=gen)
    return Inputs(lat.to(device), feats.to(device), group.res)


def noisy(inputs: Inputs, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_σ, σ, velocity target ε − x) with the library's timestep sampling at this resolution."""
    x = inputs.latents.float()
    sigma = recipe.sample_sigmas(x.shape[0], recipe.TimestepSampling(), inputs.res, inputs.res,
                                 generator=gen).to(x.device)
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    return recipe.add_noise(x, noise, sigma), sigma, recipe.velocity_target(x, noise)


def reference_velocity(model, x_sigma, sigma, cap_feats) -> torch.Tensor:
    """ε − x from diffusers' forward (which takes t = 1 − σ and returns x − ε), under bf16 autocast."""
    mask = torch.ones(cap_feats.shape[:2], dtype=torch.long, device=cap_feats.device)
    with torch.autocast(x_sigma.device.type, dtype=torch.bfloat16):
        out = model(hidden_states=x_sigma.to(torch.bfloat16), timestep=1 - sigma,
                    encoder_hidden_states=cap_feats.to(torch.bfloat16), encoder_attention_mask=mask,
                    return_dict=False)[0]
    return -out.float()


def reference_lora_step(model, group: Group, inputs: Inputs, checkpointing: bool = True) -> Callable[[], float]:
    """The diffusers example script's step: PEFT LoRA (fp32 adapters) on a bf16 model, SDPA, torch AdamW,
    gradient checkpointing, eager, grad clip 1.0. Returns step() -> loss."""
    from peft import LoraConfig

    model.requires_grad_(False)
    if checkpointing:
        model.enable_gradient_checkpointing()
    modules = [m for g in TARGETS[group.targets] for m in PEFT_TARGETS[g]]
    model.add_adapter(LoraConfig(r=group.rank, lora_alpha=group.rank, init_lora_weights="gaussian",
                                 target_modules=modules))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # diffusers' cast_training_params
    opt = torch.optim.AdamW(params, lr=1e-4)
    return _step_fn(model, inputs, opt, params, clip=1.0)


def reference_full_step(model, inputs: Inputs, checkpointing: bool = True) -> Callable[[], float]:
    """A plain full fine-tune: every parameter trained in bf16 by torch AdamW (bf16 moments), gradient
    checkpointing, eager, no clipping."""
    model.requires_grad_(True)
    if checkpointing:
        model.enable_gradient_checkpointing()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    return _step_fn(model, inputs, opt, params, clip=0.0)


def _step_fn(model, inputs: Inputs, opt, params, clip: float) -> Callable[[], float]:
    model.train()
    gen = torch.Generator().manual_seed(3)

    def step() -> float:
        x_sigma, sigma, target = noisy(inputs, gen)
        pred = reference_velocity(model, x_sigma, sigma, inputs.cap_feats)
        loss = F.mse_loss(pred, target)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step
