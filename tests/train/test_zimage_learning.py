"""Z-Image learns through the headless pipeline with its own recipe: images are cached by the pipeline's route, a
LoRA trains on a tiny real ZImageTransformer2DModel (diffusers) named like Z-Image-Turbo, and the loss at fixed
noise levels falls well below its start; the run used the Turbo recipe (uniform σ, static shift 3, 8-step
previews without CFG).

The text features come from Z-Image's own encoder family: the tiny Qwen3 (tiny/qwen3.py) with its byte-level BPE
tokenizer, 32 wide like the tiny Z-Image's cap_feat_dim; the captions are cached in Z-Image's chat template.
"""

import logging

import torch

from lumina2_train import recipe
from lumina2_train.config import (
    TARGET_PRESETS,
    AdapterConfig,
    CacheConfig,
    DataConfig,
    DatasetConfig,
    ModelConfig,
    RunConfig,
    SaveConfig,
    TrainConfig,
    ValidationConfig,
)
from lumina2_train.encoders.hf import HFEncoders
from lumina2_train.files.loading import load_backbone
from lumina2_train.pipeline import build_training_cache, run_training
from lumina2_train.tiny import TINY_ZIMAGE, make_tiny_transformer

from builders import write_image


def _eval_loss(backbone, adapters, samples):
    """The flow loss of every sample at 8 fixed noise levels with fixed noise."""
    gen = torch.Generator().manual_seed(123)
    sigma = torch.linspace(0.05, 0.95, 8)
    total = 0.0
    for s in samples:
        x = s.latent[None].expand(8, -1, -1, -1)
        noise = torch.randn(x.shape, generator=gen)
        with torch.no_grad():
            pred = backbone.velocity(recipe.add_noise(x, noise, sigma), sigma, s.cap_feats[None].expand(8, -1, -1),
                                     None, adapters)
        total += recipe.flow_loss(pred, recipe.velocity_target(x, noise)).item()
    return total / len(samples)


def test_a_lora_learns_on_tiny_zimage_with_the_turbo_recipe(tiny_encoder_dir, tmp_path, caplog):
    from lumina2_train.tiny.qwen3 import TINY_QWEN3, save_tiny_qwen3

    assert TINY_QWEN3["hidden_size"] == TINY_ZIMAGE["cap_feat_dim"]
    text_encoder, tokenizer = save_tiny_qwen3(tmp_path / "qwen3", seed=0)
    model_dir = tmp_path / "Z-Image-Turbo"  # model.variant 'auto' reads the variant from this name
    make_tiny_transformer(seed=0, family="zimage").save_pretrained(str(model_dir / "transformer"))
    for i, caption in enumerate(("a red cube", "a blue ball")):
        write_image(tmp_path / "data" / f"img{i}.png", (64, 64), caption=caption, seed=i)
    cfg = RunConfig(
        data=DataConfig(datasets=(DatasetConfig(path=str(tmp_path / "data"), resolution=64, min_size_px=16),)),
        model=ModelConfig(transformer=str(model_dir), text_encoder=str(text_encoder),
                          tokenizer=str(tokenizer), vae=str(tiny_encoder_dir / "vae"), dtype="fp32"),
        cache=CacheConfig(dir=str(tmp_path / "cache")),
        adapter=AdapterConfig(rank=16, alpha=16.0, targets=TARGET_PRESETS["all"] + ("final",)),
        train=TrainConfig(steps=150, batch_size=2, lr=3e-3, precision="fp32", checkpointing="off", seed=1,
                          max_grad_norm=0.0),
        validation=ValidationConfig(prompts=("a red cube",), width=64, height=64),
        save=SaveConfig(output_dir=str(tmp_path / "runs")))
    encoders = HFEncoders.from_paths(cfg.model.text_encoder, cfg.model.vae, cfg.model.tokenizer,
                                     numerics=cfg.model.text_encoder_numerics)
    assert encoders.text_family == "zimage"
    cache = build_training_cache(cfg, encoders, tmp_path / "cache")  # the same entries the run then finds
    encoders.release()
    samples = [cache.sample(i) for i in range(len(cache))]
    assert samples[0].cap_feats.shape[-1] == 32 and samples[0].latent.shape == (16, 8, 8)
    backbone = load_backbone(model_dir, "fp32")
    assert backbone.arch.is_zimage
    before = _eval_loss(backbone, None, samples)
    with caplog.at_level(logging.INFO, logger="lumina2_train.train.recipe_choice"):
        result = run_training(cfg)
    assert "training recipe: Z-Image-Turbo (from the name" in caplog.text
    assert "sigma uniform, static shift 3; previews 8 steps, shift 3, cfg 1" in caplog.text
    saved = (result.run_dir / "config.json").read_text(encoding="utf-8")
    assert '"shift_mode": "static"' in saved and '"timestep_sampling": "uniform"' in saved  # what the run used
    assert result.validations and result.validations[-1].images.shape == (1, 3, 64, 64)
    after = _eval_loss(backbone, result.adapters.as_dict(), samples)
    print(f"eval loss {before:.4f} -> {after:.4f}")
    assert after < 0.5 * before, (before, after)
