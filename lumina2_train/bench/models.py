"""The bench's models: full-size Lumina2 or Z-Image with seeded random weights (nothing is downloaded), the
reference steps (diffusers + PEFT LoRA, and a plain full fine-tune) and our backbones over the same weights.
Imports diffusers and PEFT (only the bench and tests need them); never ComfyUI (see lumina2_train/comfyui/bench.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import recipe
from ..backbones import Backbone
from ..backbones import family as families
from ..backbones.diffusers import (
    DiffusersBackbone,
    arch_from_diffusers_config,
    arch_from_zimage_config,
    native_tree_from_state,
)
from ..backbones.keys import diffusers_state_to_native
from .cases import PEFT_TARGETS, TARGETS, Group

# Lumina-Image-2.0's transformer config (diffusers layout): 2,609,769,152 parameters
FULL_DIT = dict(sample_size=128, patch_size=2, in_channels=16, hidden_size=2304, num_layers=26, num_refiner_layers=2,
                num_attention_heads=24, num_kv_heads=8, multiple_of=256, ffn_dim_multiplier=None, norm_eps=1e-5,
                scaling_factor=1.0, axes_dim_rope=(32, 32, 32), axes_lens=(300, 512, 512), cap_feat_dim=2304)
# Z-Image (Turbo and Base share it): diffusers' ZImageTransformer2DModel defaults, 6,154,908,736 parameters;
# FFN 3840 · 8/3 = 10240, RoPE axes 32/48/48 with theta 256, no GQA, Qwen3-4B caption width 2560
FULL_ZIMAGE = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                   n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560,
                   rope_theta=256.0, t_scale=1000.0, axes_dims=(32, 48, 48), axes_lens=(1024, 512, 512))
CONFIGS = {families.LUMINA2: FULL_DIT, families.ZIMAGE: FULL_ZIMAGE}


def family_of(config: dict) -> str:
    """The family member a diffusers config describes (Z-Image's configs name `dim`, Lumina2's `hidden_size`)."""
    return families.ZIMAGE if "dim" in config else families.LUMINA2


def build_dit(config: dict, device, dtype=torch.bfloat16, state: dict | None = None):
    """A diffusers Lumina2Transformer2DModel (or ZImageTransformer2DModel) on `device` in `dtype`, with `state`
    loaded when given."""
    import diffusers

    cls = diffusers.ZImageTransformer2DModel if family_of(config) == families.ZIMAGE else \
        diffusers.Lumina2Transformer2DModel
    with torch.device(device):
        model = cls(**config)
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


def native_state(weights: dict[str, torch.Tensor], config: dict = FULL_DIT) -> dict[str, torch.Tensor]:
    return diffusers_state_to_native(weights, family_of(config))


def diffusers_backbone(config: dict, native: dict[str, torch.Tensor], device) -> Backbone:
    """Our backbone over the weights (native layout, fused qkv), as DiffusersBackbone builds it."""
    ffn_hidden = native["layers.0.feed_forward.w1.weight"].shape[0] if "layers.0.feed_forward.w1.weight" in native \
        else native["noise_refiner.0.feed_forward.w1.weight"].shape[0]
    if family_of(config) == families.ZIMAGE:
        arch = arch_from_zimage_config(config, ffn_hidden, native["t_embedder.mlp.0.weight"].shape[0])
    else:
        arch = arch_from_diffusers_config(config, ffn_hidden)
    tree = native_tree_from_state({k: v.to(device) for k, v in native.items()}, arch)
    return DiffusersBackbone(tree, arch, kind="diffusers")


def comfy_backbone(config: dict, native: dict[str, torch.Tensor], device, comfy_path: str) -> Backbone:
    """ComfyUI's own NextDiT class holding the same weights (built in lumina2_train/comfyui/bench.py)."""
    from ..comfyui.bench import comfy_backbone as build

    return build(config, native, device, comfy_path)


@dataclass
class Inputs:
    """Cached-style inputs on the device: the reference's first batch (scaled latents, Gemma- or Qwen-width
    caption features cut to the batch's longest caption, its padding mask) and the whole training set."""

    latents: torch.Tensor  # (B, 16, H/8, W/8)
    cap_feats: torch.Tensor  # (B, L, cap_feat_dim), L = the longest caption of the batch
    res: int
    cap_mask: torch.Tensor | None = None  # (B, L) 1 = token; None when every caption fills L
    # every sample of the training set: (latent (16, h, w), caption features (n, D)), fp32 on the CPU;
    # () = the batch above is the whole set
    dataset: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """The set in consecutive batches of the reference's batch size (latents, padded features, mask or
        None), on the device; the reference step cycles through them."""
        if not self.dataset:
            return [(self.latents, self.cap_feats, self.cap_mask)]
        b, dev = self.latents.shape[0], self.latents.device
        return [_stack(self.dataset[i : i + b], dev) for i in range(0, len(self.dataset) - b + 1, b)]


def _stack(items, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    lengths = [f.shape[0] for _, f in items]
    n = max(lengths)
    feats = torch.zeros(len(items), n, items[0][1].shape[1])
    for row, (_, f) in enumerate(items):
        feats[row, : f.shape[0]] = f
    mask = None if min(lengths) == n else (torch.arange(n)[None] < torch.tensor(lengths)[:, None]).long()
    lat = torch.stack([x for x, _ in items])
    return lat.to(device), feats.to(device), None if mask is None else mask.to(device)


def sample_lengths(group) -> list[int]:
    """Caption tokens of each training sample: caption_lengths cycled over the set, else caption_tokens."""
    n = dataset_size(group)
    return [group.caption_lengths[i % len(group.caption_lengths)] if group.caption_lengths
            else group.caption_tokens for i in range(n)]


def dataset_size(group) -> int:
    return max(group.batch, group.samples, len(group.caption_lengths))


def make_inputs(group: Group, config: dict, device, seed: int = 1) -> Inputs:
    """The group's training set (seeded): `dataset_size` samples, spread evenly over group.aspects (w, h) when
    given, else all res²; caption i has sample_lengths(group)[i] tokens."""
    gen = torch.Generator().manual_seed(seed)
    lengths = sample_lengths(group)
    sizes = list(group.aspects) or [(group.res, group.res)]
    per = -(-len(lengths) // len(sizes))
    items = []
    for i, n in enumerate(lengths):
        w, h = sizes[min(i // per, len(sizes) - 1)]
        lat = torch.randn(config["in_channels"], h // 8, w // 8, generator=gen)
        items.append((lat, torch.randn(n, config["cap_feat_dim"], generator=gen)))
    lat, feats, mask = _stack(items[: group.batch], device)
    plain = len(items) == group.batch and not group.aspects
    return Inputs(lat, feats, group.res, mask, () if plain else tuple(items))


def noisy(latents: torch.Tensor, res: int, gen: torch.Generator):
    """(x_σ, σ, velocity target ε − x) with the library's timestep sampling at this resolution."""
    x = latents.float()
    sigma = recipe.sample_sigmas(x.shape[0], recipe.TimestepSampling(), res, res, generator=gen).to(x.device)
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    return recipe.add_noise(x, noise, sigma), sigma, recipe.velocity_target(x, noise)


def reference_velocity(model, x_sigma, sigma, cap_feats, cap_mask=None) -> torch.Tensor:
    """ε − x from diffusers' forward (which takes t = 1 − σ and returns x − ε), under bf16 autocast.
    Z-Image's forward takes lists: one (16, 1, h, w) latent and one caption cut to its length per sample."""
    mask = torch.ones(cap_feats.shape[:2], dtype=torch.long, device=cap_feats.device) if cap_mask is None \
        else cap_mask.long()
    with torch.autocast(x_sigma.device.type, dtype=torch.bfloat16):
        if type(model).__name__ == "ZImageTransformer2DModel":
            lengths = mask.sum(1).tolist()
            out = model([x.unsqueeze(1) for x in x_sigma.to(torch.bfloat16)], 1 - sigma,
                        [f[:n] for f, n in zip(cap_feats.to(torch.bfloat16), lengths)], return_dict=False)[0]
            return -torch.stack([o.squeeze(1) for o in out]).float()
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
    batches, count = inputs.batches(), [0]

    def step() -> float:
        lat, feats, mask = batches[count[0] % len(batches)]
        count[0] += 1
        x_sigma, sigma, target = noisy(lat, inputs.res, gen)
        pred = reference_velocity(model, x_sigma, sigma, feats, mask)
        loss = F.mse_loss(pred, target)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step
