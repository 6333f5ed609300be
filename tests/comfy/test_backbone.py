"""ComfyBackbone: the library's forward over ComfyUI's NextDiT equals ComfyUI's own forward, and diffusers'."""

from types import SimpleNamespace

import pytest
import torch

from lumina2_train.backbones import keys
from lumina2_train.backbones.comfy import ComfyBackbone
from lumina2_train.backbones.diffusers import DiffusersBackbone
from lumina2_train.errors import ModelError
from lumina2_train.tiny.comfy_layout import COMFY_TINY_ARCH

from builders import comfy_velocity

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def backbone(comfy, comfy_model):
    with torch.inference_mode():  # as inside a node
        return ComfyBackbone.from_model_patcher(comfy_model)


def test_arch_is_read_from_the_module(backbone):
    assert backbone.arch == COMFY_TINY_ARCH  # dim 2304, 1 layer, 2+2 refiners, FFN 9216, qk-norm eps None
    assert backbone.arch.ffn_hidden == 9216 and backbone.arch.qk_norm_eps is None
    assert backbone.kind == "comfy" and backbone.patcher is not None


def test_velocity_equals_comfyui_forward(comfy, comfy_model, backbone, comfy_inputs):
    x, sigma, feats = comfy_inputs(b=2, L=7)
    ref = comfy_velocity(backbone.patcher, x, sigma, feats)
    with torch.no_grad():
        ours = backbone.velocity(x, sigma, feats, None)
    assert ours.abs().mean() > 0.1  # a real signal, not zeros
    assert (ours - ref).abs().max() <= 1e-5


def test_padded_captions_equal_comfyui_on_the_unpadded_caption(backbone, comfy_inputs):
    # ComfyUI's own mask path misplaces the mask when a caption is padded (0.3.64) and [newer] ignores it,
    # so the reference is ComfyUI on the caption without padding.
    x, sigma, feats = comfy_inputs(b=1, L=7, seed=1)
    padded = torch.cat([feats[:, :4], torch.randn(1, 3, 32)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    ref = comfy_velocity(backbone.patcher, x, sigma, feats[:, :4])
    with torch.no_grad():
        ours = backbone.velocity(x, sigma, padded, mask)
    assert (ours - ref).abs().max() <= 1e-5


def test_diffusers_backbone_on_the_same_weights_agrees(backbone, comfy_inputs):
    from diffusers import Lumina2Transformer2DModel
    from diffusers.models.transformers.transformer_lumina2 import Lumina2RotaryPosEmbed

    a = backbone.arch
    cfg = dict(sample_size=16, patch_size=a.patch_size, in_channels=a.in_channels, hidden_size=a.dim,
               num_layers=a.n_layers, num_refiner_layers=a.n_refiner_layers, num_attention_heads=a.n_heads,
               num_kv_heads=a.n_kv_heads, multiple_of=256, ffn_dim_multiplier=None, norm_eps=a.norm_eps,
               axes_dim_rope=a.axes_dims, axes_lens=a.axes_lens, cap_feat_dim=a.cap_feat_dim)
    x, sigma, feats = comfy_inputs(b=2, L=7, seed=2)
    with torch.inference_mode():  # ComfyUI's weights are inference tensors: share them without copies
        with torch.device("meta"):
            model = Lumina2Transformer2DModel(**cfg)
        model.rope_embedder = Lumina2RotaryPosEmbed(10000, list(a.axes_dims), list(a.axes_lens), a.patch_size)
        sd = keys.native_state_to_diffusers(backbone.tree.state_dict(), a.qkv_split)
        missing, unexpected = model.load_state_dict(sd, strict=True, assign=True)
        diffusers_bb = DiffusersBackbone.from_model(model.eval())
        ref = backbone.velocity(x, sigma, feats, None)
        ours = diffusers_bb.velocity(x, sigma, feats, None)
        theirs = -model(x, 1 - sigma, feats, torch.ones(2, 7, dtype=torch.long), return_dict=False)[0]
    assert not missing and not unexpected
    # diffusers builds its qk RMSNorms with eps 1e-5, ComfyUI with torch's default (~1.2e-7): a ~1e-6 effect
    assert (ours - ref).abs().max() <= 1e-5
    assert (theirs - ref).abs().max() <= 1e-5


def test_base_weights_get_no_gradient_and_flags_stay(backbone, comfy_inputs):
    tree = backbone.tree
    flags = {n: p.requires_grad for n, p in tree.named_parameters()}
    x, sigma, feats = comfy_inputs(b=1, L=3, seed=3)
    x.requires_grad_(True)
    with torch.inference_mode():  # a node's context; training_mode() must make the backward possible
        from lumina2_train.backbones.inference import training_mode

        with training_mode():
            backbone.velocity(x, sigma, feats, None).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in tree.parameters())
    assert {n: p.requires_grad for n, p in tree.named_parameters()} == flags


def test_not_a_lumina2_model_is_refused(comfy):
    with pytest.raises(ModelError, match="not a ComfyUI MODEL"):
        ComfyBackbone.from_model_patcher(object())
    with pytest.raises(ModelError, match="not Lumina2"):
        ComfyBackbone.from_model_patcher(SimpleNamespace(model=SimpleNamespace(), clone=None))

    # the NextDiT variants newer ComfyUI builds: tests/comfy/test_variants.py


def test_fp8_stored_model_goes_through_comfy_casting(comfy, comfy_models, comfy_inputs):
    from lumina2_train.backbones.inference import training_mode

    with torch.inference_mode():
        (fp8,) = comfy.nodes.UNETLoader().load_unet(comfy_models["diffusion_model"].name, "fp8_e4m3fn")
        bb = ComfyBackbone.from_model_patcher(fp8)
    tree = bb.tree
    assert tree.x_embedder.weight.dtype == torch.float8_e4m3fn and tree.x_embedder.comfy_cast_weights
    assert bb.dtype == fp8.model.manual_cast_dtype  # the compute dtype, not the storage dtype
    x, sigma, feats = comfy_inputs(b=1, L=5, seed=4)
    ref = comfy_velocity(bb.patcher, x, sigma, feats)
    x.requires_grad_(True)
    with torch.inference_mode(), training_mode():
        ours = bb.velocity(x, sigma, feats, None)
        ours.square().mean().backward()
    assert (ours.detach() - ref).abs().max() <= 1e-5
    assert x.grad is not None and all(p.grad is None for p in tree.parameters())


def test_fp8_compute_runs_on_comfyui_weights_without_touching_them(backbone, comfy_inputs):
    """model.base_compute on a ComfyUI MODEL (its inference-mode weights, through comfy.ops casting): the
    block GEMMs go through the fp8 path (CPU emulation here), gradients reach the input, none the weights."""
    from lumina2_train.backbones.inference import training_mode

    x, sigma, feats = comfy_inputs(b=1, L=5, seed=5)
    outs, grads = {}, {}
    try:
        for compute in ("bf16", "fp8_emulated"):
            backbone.options.base_compute = compute
            xg = x.clone().requires_grad_(True)
            with torch.inference_mode(), training_mode():
                out = backbone.velocity(xg, sigma, feats, None)
                out.square().mean().backward()
            outs[compute], grads[compute] = out.detach(), xg.grad
        with torch.no_grad():
            plain = backbone.velocity(x, sigma, feats, None)  # previews and sampling stay exact
    finally:
        backbone.options.base_compute = "bf16"
    rel = (outs["fp8_emulated"] - outs["bf16"]).norm() / outs["bf16"].norm()
    assert 0 < rel < 0.1, rel
    assert (grads["fp8_emulated"] - grads["bf16"]).norm() / grads["bf16"].norm() < 0.2
    assert (plain - outs["bf16"]).abs().max() <= 1e-5
    assert all(p.grad is None for p in backbone.tree.parameters())
