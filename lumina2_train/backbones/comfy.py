"""The ComfyUI backbone: the NextDiT inside a ComfyUI MODEL, run by the library's one forward (nextdit.py).

ComfyUI's NextDiT already uses the native names, so nothing is renamed or copied. The MODEL is cloned and
loaded with ComfyUI's own model management (patches a user applied before training, e.g. a LoRA, are in the
weights then); the shared nn.Module is only read: no parameter is written, no flag changed, no module or
hook added. Weights go through comfy.ops' casting when a module needs it (fp8 or other manual-cast storage,
weight_function lists). ComfyUI is imported inside functions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from . import Backbone, family
from .inference import is_autograd_safe, training_mode
from .nextdit import ArchConfig, Linears, velocity

LUMINA2_DIM = 2304
EVICT_ALL = 1e20  # memory_required that makes ComfyUI unload every other model from the device
_FIX = "Connect the MODEL of a Lumina-Image-2.0 or Z-Image checkpoint (Load Checkpoint, or Load Diffusion Model " \
       "with lumina_2_model_bf16.safetensors or z_image_turbo_bf16.safetensors)"


def _needs_cast(module: nn.Module) -> bool:
    return bool(getattr(module, "comfy_cast_weights", False) or getattr(module, "weight_function", None)
                or getattr(module, "bias_function", None))


def _copy(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


def comfy_weight(module: nn.Module, dtype: torch.dtype, device: torch.device):
    """(weight, bias) of a comfy.ops module in `dtype` on `device`, as ComfyUI's own forward would use them."""
    if _needs_cast(module):
        import comfy.ops

        out = comfy.ops.cast_bias_weight(module, dtype=dtype, device=device, bias_dtype=dtype)
        return out[0], out[1]  # newer ComfyUI can return a third item (an offload stream)
    weight = module.weight.to(device=device, dtype=dtype)
    return weight, (module.bias.to(device=device, dtype=dtype) if module.bias is not None else None)


class ComfyLinears(Linears):
    """Linears over ComfyUI's weights: norms also go through comfy.ops casting (fp8 norms, weight_function
    patches), and with `copy_weights` every weight is copied per use (see `needs_weight_copies`)."""

    def __init__(self, adapters, weight_fn, frozen: bool = True, copy_weights: bool = False, compute: str = "bf16"):
        super().__init__(adapters, weight_fn, frozen=frozen, compute=compute)
        self.copy_weights = copy_weights

    def _base(self, module: nn.Module, x: torch.Tensor):
        weight, bias = super()._base(module, x)
        return (_copy(weight), _copy(bias)) if self.copy_weights else (weight, bias)

    def norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if norm.weight is None:
            return F.rms_norm(x, (x.shape[-1],), None, norm.eps)
        w = comfy_weight(norm, x.dtype, x.device)[0] if _needs_cast(norm) else norm.weight.to(x.device, x.dtype)
        w = _copy(w) if self.copy_weights else w
        return F.rms_norm(x, (x.shape[-1],), w.detach() if self.frozen else w, norm.eps)


def needs_weight_copies(tree: nn.Module) -> bool:
    """True when autograd cannot save some of `tree`'s weights while grad is on. ComfyUI loads weights under
    inference mode; autograd cannot save those (nor ones moved to the GPU outside it), so they are copied per
    use: a transient copy with activation checkpointing, a second copy held for backward without it. Decided
    once per forward, outside the compiled blocks (a per-tensor check inside them breaks their graphs)."""
    return torch.is_grad_enabled() and not all(is_autograd_safe(t) for t in (*tree.parameters(), *tree.buffers()))


def check_nextdit(model) -> nn.Module:
    """The NextDiT of ComfyUI MODEL `model`; ModelError when it is not a NextDiT family member we train.

    The member is read from the module's own state-dict keys (backbones/family.py, as ComfyUI's detection
    reads a file); options a newer ComfyUI sets that the keys do not show are checked against the member's.
    """
    import comfy.model_base

    base = getattr(model, "model", None)
    if base is None or not hasattr(model, "clone"):
        raise ModelError(f"model: not a ComfyUI MODEL (got {type(model).__name__}). {_FIX}")
    lumina2 = getattr(comfy.model_base, "Lumina2", None)
    if lumina2 is None or not isinstance(base, lumina2):
        raise ModelError(f"model: this MODEL is a {type(base).__name__}, not Lumina2 or Z-Image. {_FIX}")
    tree = getattr(base, "diffusion_model", None)
    if type(tree).__name__ == "NextDiTPixelSpace":
        raise family.refusal("model", dict(family.UNSUPPORTED_KEYS)["dec_net.cond_embed.weight"])
    if type(tree).__name__ != "NextDiT" or not hasattr(tree, "state_dict"):
        raise ModelError(f"model: this MODEL's network is a {type(tree).__name__}, not a NextDiT. {_FIX}")
    member = family.detect_family(tree.state_dict(keep_vars=True).keys(), "model")
    expected = family.family_options(member)
    # masked_pad_multiple ([newer], Ming-Image) shifts the image RoPE positions; no member we train sets it
    options = {"time_scale": expected["time_scale"], "pad_tokens_multiple": expected["pad_tokens_multiple"],
               "masked_pad_multiple": None}
    for option, want in options.items():
        got = getattr(tree, option, want)
        if (got is None) != (want is None) or (got is not None and float(got) != float(want)):
            raise family.refusal("model", f"a {family.NAMES[member]} NextDiT with {option}={got} (a "
                                          f"{family.NAMES[member]} has {want})")
    if member not in family.SUPPORTED:
        raise family.refusal("model", family.NAMES[member])
    return tree


def training_clone(model):
    """A clone of MODEL `model` whose weights load fully onto the device, for training over them.

    [newer] A dynamic-VRAM MODEL (`is_dynamic()`, on by default on GPUs) keeps its weights where ComfyUI streams
    them from per forward, not in the module; its plain clone is dynamic too. `clone(disable_dynamic=True)` gives
    an ordinary ModelPatcher over a module of its own, rebuilt from the loaded file with the same patches, so
    training reads the real weights and the shared dynamic model is not touched (ComfyUI's own trainer avoids
    the dynamic weights as well). Feature-detected: older ComfyUI has no dynamic models.
    """
    is_dynamic = getattr(model, "is_dynamic", None)
    if not (callable(is_dynamic) and is_dynamic()):
        return model.clone()
    try:
        clone = model.clone(disable_dynamic=True)
    except (TypeError, RuntimeError) as e:  # no such argument, or a MODEL ComfyUI cannot rebuild
        raise ModelError(f"model: this dynamic-VRAM MODEL cannot be turned into a fully loaded copy for training "
                         f"({type(e).__name__}: {e}). Start ComfyUI with --disable-dynamic-vram") from e
    if getattr(clone, "is_dynamic", lambda: False)():
        raise ModelError("model: ComfyUI returned a dynamic-VRAM clone for training. Start ComfyUI with "
                         "--disable-dynamic-vram")
    return clone


def arch_from_nextdit(tree: nn.Module) -> ArchConfig:
    """ArchConfig read from a ComfyUI NextDiT module (shapes, the family member from its keys, each norm's eps)."""
    blocks = list(tree.layers) + list(tree.noise_refiner)
    if not blocks or len(tree.noise_refiner) != len(tree.context_refiner):
        raise ModelError(f"model: unexpected NextDiT layout ({len(tree.layers)} layers, {len(tree.noise_refiner)} "
                         f"noise / {len(tree.context_refiner)} context refiners). {_FIX}")
    blk = blocks[0]
    attn = blk.attention
    if getattr(attn.q_norm, "weight", None) is None:
        raise family.refusal("model", "a NextDiT without qk-norm (qk_norm=False)")
    member = family.detect_family(tree.state_dict(keep_vars=True).keys(), "model")
    t_hidden = tree.t_embedder.mlp[0].weight.shape[0]
    return ArchConfig(
        dim=tree.dim, n_layers=len(tree.layers), n_refiner_layers=len(tree.noise_refiner),
        n_heads=attn.n_local_heads, n_kv_heads=attn.n_local_kv_heads, ffn_hidden=blk.feed_forward.w1.weight.shape[0],
        cap_feat_dim=tree.cap_embedder[1].weight.shape[1], patch_size=tree.patch_size, in_channels=tree.in_channels,
        axes_dims=tuple(int(a) for a in tree.axes_dims), axes_lens=tuple(int(a) for a in tree.axes_lens),
        norm_eps=blk.attention_norm1.eps, qk_norm_eps=attn.q_norm.eps, rope_theta=float(tree.rope_embedder.theta),
        family=member, time_scale=float(getattr(tree, "time_scale", 1.0)),
        pad_tokens_multiple=getattr(tree, "pad_tokens_multiple", None),
        t_hidden=None if t_hidden == min(tree.dim, 1024) else t_hidden,
    )


class ComfyBackbone(Backbone):
    """Backbone over a ComfyUI MODEL's NextDiT. Keep the object alive while training: it holds the loaded clone."""

    patcher = None  # the ModelPatcher clone this backbone loaded

    @classmethod
    def from_model_patcher(cls, model, *, memory_required: float = EVICT_ALL) -> ComfyBackbone:
        """Clone MODEL `model`, load the clone fully on ComfyUI's device and wrap its NextDiT.

        Args:
            model: a ComfyUI MODEL (ModelPatcher) holding a Lumina-Image-2.0 NextDiT.
            memory_required: bytes ComfyUI keeps free on the device besides the weights, unloading other
                models for it; the default unloads every other model (as ComfyUI's own trainer does), 0 keeps
                what fits.
        Raises:
            ModelError: `model` is not Lumina-Image-2.0.
        """
        import comfy.model_management as mm

        check_nextdit(model)
        patcher = training_clone(model)
        with training_mode():
            mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
        tree = patcher.model.diffusion_model
        backbone = cls(tree, arch_from_nextdit(tree), weight_fn=comfy_weight, kind="comfy")
        backbone.patcher = patcher
        return backbone

    def velocity(self, x_sigma: torch.Tensor, sigma: torch.Tensor, cap_feats: torch.Tensor,
                 cap_mask: torch.Tensor | None, adapters: dict[str, nn.Module] | None = None,
                 *, frozen: bool = True) -> torch.Tensor:
        """ε − x (library convention) from ComfyUI's NextDiT weights; see Backbone.velocity."""
        lin = ComfyLinears(self.forward_adapters(adapters), self.weight_fn, frozen=frozen,
                           copy_weights=needs_weight_copies(self.tree),
                           compute=self.options.base_compute)
        return velocity(self.tree, self.arch, x_sigma, sigma, cap_feats, cap_mask, lin, self.options)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype ComfyUI uses for this model (its manual-cast dtype when weights are stored in fp8)."""
        base = self.patcher.model if self.patcher is not None else None
        cast = getattr(base, "manual_cast_dtype", None)
        return cast if cast is not None else self.tree.x_embedder.weight.dtype


__all__ = ["LUMINA2_DIM", "ComfyBackbone", "arch_from_nextdit", "check_nextdit", "comfy_weight", "training_clone"]
