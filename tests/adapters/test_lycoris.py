"""LoHa, LoKr and DoRA: identity at creation, merged == unmerged, exact files in ComfyUI's layout."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lumina2_train.adapters import LoKr, build_adapters
from lumina2_train.backbones import Backbone
from lumina2_train.backbones.diffusers import native_tree_from_state
from lumina2_train.config import AdapterConfig
from lumina2_train.errors import FormatError
from lumina2_train.files.formats import adapter_state_dict, read_adapter_tensors, save_adapters
from lumina2_train.train import train_lora

from builders import velocity_inputs

KINDS = {
    "loha": AdapterConfig(kind="loha", rank=4, alpha=2.0, targets=("attention", "ffn", "adaln")),
    "lokr": AdapterConfig(kind="lokr", rank=2, alpha=4.0, targets=("attention", "ffn", "adaln")),
    "lokr_full": AdapterConfig(kind="lokr", rank=64, alpha=4.0, lokr_factor=4, targets=("attention",)),
    "dora": AdapterConfig(kind="lora", use_dora=True, rank=4, alpha=8.0, targets=("attention", "ffn", "adaln")),
}


def _batch():
    return velocity_inputs(2, 5, sigmas=[0.3, 0.8], seed=5)


def _randomise(adapters):
    with torch.no_grad():
        for n, p in adapters.named_parameters():
            p.add_(torch.randn_like(p) * (0.05 if "magnitude" not in n else 0.1))


@pytest.mark.parametrize("kind", KINDS)
def test_identity_at_creation_and_merged_equals_unmerged(tiny_backbone, kind):
    x, s, f = _batch()
    base = tiny_backbone.velocity(x, s, f, None)
    adapters = build_adapters(tiny_backbone, KINDS[kind])
    torch.testing.assert_close(tiny_backbone.velocity(x, s, f, None, adapters.as_dict()), base, atol=1e-5, rtol=1e-5)
    _randomise(adapters)
    with torch.no_grad():
        unmerged = tiny_backbone.velocity(x, s, f, None, adapters.as_dict())
        sd = dict(tiny_backbone.tree.state_dict())
        sd.update(adapters.merged_weights(tiny_backbone))
        merged = Backbone(native_tree_from_state(sd, tiny_backbone.arch), tiny_backbone.arch).velocity(x, s, f, None)
    assert not torch.allclose(unmerged, base, atol=1e-4)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)


def test_lokr_forward_matches_the_kronecker_product():
    mod = LoKr(96, 192, rank=2, alpha=4.0)
    with torch.no_grad():
        mod.lokr_w2_b.normal_()
    x = torch.randn(3, 7, 96)
    torch.testing.assert_close(mod(x), F.linear(x, mod.delta_weight()), atol=1e-5, rtol=1e-5)
    assert mod.decomposed and mod.lokr_w1.shape[0] * mod.lokr_w2_a.shape[0] == 192


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_comfyui_file_round_trip_is_exact(tiny_backbone, tmp_path, kind):
    adapters = build_adapters(tiny_backbone, KINDS[kind])
    _randomise(adapters)
    path = save_adapters(adapters, tmp_path / "a.safetensors", dtype="fp32", arch=tiny_backbone.arch)
    sd = adapter_state_dict(adapters, "comfyui", tiny_backbone.arch)
    assert all(k.startswith("diffusion_model.") and ".attn." not in k for k in sd)
    fresh = build_adapters(tiny_backbone, KINDS[kind])
    for name, tensors in read_adapter_tensors(path).items():
        fresh[name].load_file_tensors(tensors)
    for name, mod in adapters.items():
        if hasattr(mod, "adapted_weight"):
            w = tiny_backbone.linear(name).weight.float()
            torch.testing.assert_close(fresh[name].adapted_weight(w), mod.adapted_weight(w))
        else:
            torch.testing.assert_close(fresh[name].delta_weight(), mod.delta_weight())


def test_non_lora_adapters_refuse_kohya_and_diffusers_files(tiny_backbone):
    adapters = build_adapters(tiny_backbone, KINDS["dora"])
    with pytest.raises(FormatError, match="only in the 'comfyui' format"):
        adapter_state_dict(adapters, "kohya", tiny_backbone.arch)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["loha", "lokr", "dora"])
def test_each_kind_trains_and_continues_from_its_file(tiny_backbone, tensor_cache, run_config, tmp_path, kind):
    cfg = dataclasses.replace(run_config(tmp_path, steps=3, lr=1e-2), adapter=KINDS[kind])
    res = train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    assert all(torch.isfinite(torch.tensor(res.losses)))
    again = dataclasses.replace(cfg, adapter=dataclasses.replace(KINDS[kind], init_from=str(res.lora_path)),
                                train=dataclasses.replace(cfg.train, steps=1, lr=0.0))
    res2 = train_lora(again, tiny_backbone, tensor_cache, run_dir=tmp_path / "b")
    name = res.adapters.names[0]
    for p, q in zip(res.adapters[name].parameters(), res2.adapters[name].parameters()):
        torch.testing.assert_close(p, q, atol=2e-2, rtol=2e-2)  # the file is bf16


def test_dora_on_an_8bit_base_uses_the_dequantised_weight(tiny_backbone):
    from lumina2_train.backbones.quant import quantize_base

    quantize_base(tiny_backbone, "int8")
    x, s, f = _batch()
    base = tiny_backbone.velocity(x, s, f, None)
    adapters = build_adapters(tiny_backbone, KINDS["dora"])
    torch.testing.assert_close(tiny_backbone.velocity(x, s, f, None, adapters.as_dict()), base, atol=1e-5, rtol=1e-5)
    name = "layers.0.attention.qkv"
    torch.testing.assert_close(adapters[name].magnitude, tiny_backbone.base_weight(name).norm(dim=0, keepdim=True),
                               atol=1e-5, rtol=1e-5)
