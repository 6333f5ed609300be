"""adapter.training_adapter: a LoRA file under the trained adapter for the run only (adapters/frozen.py,
files/training_adapter.py). The forward with it equals the base with its ΔW merged; the saved file holds only the
trained adapter; the previews sample without it; the user's file is never written; kinds that cannot stack on it
(DoRA, full) and bad files are refused naming the setting; Z-Image-Turbo without one is warned about."""

import copy
import dataclasses
import hashlib
import logging

import pytest
import torch

from lumina2_train.backbones.arch import ArchConfig
from lumina2_train.backbones.diffusers import DiffusersBackbone
from lumina2_train.config import AdapterConfig, RunConfig, ValidationConfig
from lumina2_train.errors import ConfigError, FormatError
from lumina2_train.files.formats import LoraModule, read_lora, save_lora
from lumina2_train.files.training_adapter import load_training_adapter
from lumina2_train.train import train_lora
from lumina2_train.train.recipe_choice import choose_recipe
from lumina2_train.train.validation import sample_latents

from builders import linear_decode, velocity_inputs

# the training adapter covers attention and FFN of every block; the runs below train attention only
UNDER = ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def write_training_adapter(path, backbone, rank=2, alpha=4.0, seed=3):
    """A random LoRA (with alpha: scale 2) on UNDER of every main layer, written in ComfyUI's layout."""
    gen = torch.Generator().manual_seed(seed)
    mods = {}
    for name in backbone.linear_names():
        if name.startswith("layers.") and name.split(".", 2)[2] in UNDER:
            out_f, in_f = backbone.linear(name).weight.shape
            mods[name] = LoraModule(torch.randn(rank, in_f, generator=gen) * 0.3,
                                    torch.randn(out_f, rank, generator=gen) * 0.3, alpha)
    save_lora(mods, path, fmt="comfyui", dtype="fp32", arch=backbone.arch)
    return mods


def test_the_forward_with_it_is_the_base_with_its_lora_merged(tiny_dit, tiny_backbone, tmp_path):
    mods = write_training_adapter(tmp_path / "under.safetensors", tiny_backbone)
    merged = DiffusersBackbone.from_model(copy.deepcopy(tiny_dit))
    with torch.no_grad():
        for name, m in mods.items():
            merged.linear(name).weight += m.delta_weight()
    x, sigma, feats = velocity_inputs(2, 5, seed=1)
    plain = tiny_backbone.velocity(x, sigma, feats, None)
    tiny_backbone.training_adapter = load_training_adapter(tmp_path / "under.safetensors", tiny_backbone)
    assert set(tiny_backbone.training_adapter) == set(mods)
    out_f, in_f = tiny_backbone.linear("layers.0.attention.qkv").weight.shape
    trained = {"layers.0.attention.qkv": torch.nn.Linear(in_f, out_f, bias=False)}  # any additive adapter
    torch.testing.assert_close(tiny_backbone.velocity(x, sigma, feats, None), merged.velocity(x, sigma, feats, None),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiny_backbone.velocity(x, sigma, feats, None, trained),
                               merged.velocity(x, sigma, feats, None, trained), rtol=1e-5, atol=1e-5)
    assert (tiny_backbone.velocity(x, sigma, feats, None) - plain).abs().max() > 1e-3
    with tiny_backbone.training_adapter_off():
        torch.testing.assert_close(tiny_backbone.velocity(x, sigma, feats, None), plain, rtol=0, atol=0)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_run_trains_over_it_saves_only_its_adapter_and_previews_without_it(run_config, tiny_dit, tensor_cache,
                                                                          tmp_path):
    under = tmp_path / "user" / "under.safetensors"
    under.parent.mkdir()
    write_training_adapter(under, DiffusersBackbone.from_model(tiny_dit))
    before = _digest(under)
    base = run_config(tmp_path, save={"dtype": "fp32"}, steps=3, caption_dropout=0.0)
    adapter = dataclasses.replace(base.adapter, targets=("attention",), dropout=0.0)
    v = ValidationConfig(prompts=("a red cube",), width=32, height=32, steps=3, guidance=1.0)
    cfg = dataclasses.replace(base, adapter=dataclasses.replace(adapter, training_adapter=str(under)), validation=v)
    runs = {}
    for label, c in (("with", cfg), ("without", dataclasses.replace(cfg, adapter=adapter))):
        backbone = DiffusersBackbone.from_model(copy.deepcopy(tiny_dit))
        runs[label] = (backbone, train_lora(c, backbone, tensor_cache, run_dir=tmp_path / label,
                                            lora_path=tmp_path / f"{label}.safetensors", decode=linear_decode))
    backbone, res = runs["with"]
    assert _digest(under) == before  # the user's file is only read
    assert res.losses != runs["without"][1].losses  # it was under the adapter while training
    saved = read_lora(res.lora_path)
    trained = dict(res.adapters.items())
    assert set(saved) == set(trained) and all(n.endswith(("attention.qkv", "attention.out")) for n in saved)
    for name, mod in saved.items():  # the file is the trained ΔW alone: nothing of the training adapter folded in
        torch.testing.assert_close(mod.delta_weight(), trained[name].delta_weight().float(), rtol=1e-5, atol=1e-6)
    # the previews: the trained adapter on the model without the training adapter
    plain = DiffusersBackbone.from_model(copy.deepcopy(tiny_dit))
    with torch.no_grad():
        want = linear_decode(sample_latents(plain, res.adapters.as_dict(), tensor_cache, v, list(v.prompts),
                                            device="cpu", dtype=torch.float32))
    torch.testing.assert_close(res.validations[-1].images, ((want + 1) / 2).clamp(0, 1), rtol=1e-5, atol=1e-5)
    assert backbone.base_fingerprint() != plain.base_fingerprint()  # a resume with another training adapter differs


@pytest.mark.parametrize(("adapter", "why"), [
    (AdapterConfig(kind="full", targets=()), "saves the whole weight"),
    (AdapterConfig(use_dora=True), "rescales the base weight"),
])
def test_kinds_that_cannot_stack_on_it_are_refused(adapter, why):
    errors = dataclasses.replace(adapter, training_adapter="/m/under.safetensors").errors()
    assert any(e.startswith("adapter.training_adapter is set") and why in e and "LoRA, LoHa or LoKr" in e
               for e in errors), errors
    for kind in ("lora", "loha", "lokr"):
        assert not AdapterConfig(kind=kind, training_adapter="/m/under.safetensors").errors()


def test_a_missing_file_is_refused_before_any_model_loads(tmp_path):
    from lumina2_train.pipeline import check_model_paths

    model = {f: str(tmp_path) for f in ("transformer", "text_encoder", "vae")}
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model),
                              adapter=AdapterConfig(training_adapter=str(tmp_path / "gone.safetensors")))
    with pytest.raises(ConfigError, match=r"adapter.training_adapter '.*gone.safetensors' does not exist"):
        check_model_paths(cfg)


def test_a_file_for_another_model_names_the_setting_and_the_file(tiny_backbone, tmp_path):
    path = tmp_path / "other.safetensors"
    save_lora({"layers.0.attention.out": LoraModule(torch.ones(2, 64), torch.ones(64, 2))}, path, fmt="comfyui",
              dtype="fp32", arch=ArchConfig(dim=64, n_heads=2, n_kv_heads=2))
    with pytest.raises(FormatError, match=r"^adapter.training_adapter: .*other.safetensors.*does not fit"):
        load_training_adapter(path, tiny_backbone)
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(FormatError, match=r"^adapter.training_adapter: .*folder.safetensors is a folder"):
        load_training_adapter(tmp_path / "folder.safetensors", tiny_backbone)


def test_turbo_without_a_training_adapter_is_warned_about(caplog):
    cfg = RunConfig(validation=ValidationConfig(prompts=("a cat",)))
    zimage, turbo = ArchConfig(family="zimage"), "/m/z_image_turbo_bf16.safetensors"
    with caplog.at_level(logging.WARNING):
        choose_recipe(cfg, zimage, source=turbo, where="model")
    assert any("Z-Image-Turbo is step-distilled" in r.getMessage() and "adapter.training_adapter" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        with_one = dataclasses.replace(cfg, adapter=AdapterConfig(training_adapter="/m/under.safetensors"))
        choose_recipe(with_one, zimage, source=turbo, where="model")
        choose_recipe(cfg, zimage, source="/m/z_image_bf16.safetensors", where="model")  # Base
    assert not [r for r in caplog.records if "step-distilled" in r.getMessage()]
