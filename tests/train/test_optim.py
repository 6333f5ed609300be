"""Optimisers and schedules by name: each choice builds what it names, schedules follow their curves."""

import math

import pytest
import torch

from lumina2_train.config import OPTIMIZERS, SCHEDULERS, TrainConfig
from lumina2_train.errors import ConfigError
from lumina2_train.train.optim import build_optimizer, build_scheduler, check_available, lr_factor

EXPECTED_CLASS = {
    "adamw": "AdamW", "adamw_bf16": "AdamW", "lion": "Lion", "prodigy": "Prodigy",
    "optimi-stableadamw": "StableAdamW", "adamw_schedulefree": "AdamWScheduleFree", "adafactor": "Adafactor",
}


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"adamw8bit"}))
def test_each_optimizer_is_what_it_says_and_steps(name):
    p = torch.nn.Parameter(torch.ones(4, 4))
    opt = build_optimizer([p], TrainConfig(optimizer=name, lr=1.0 if name == "prodigy" else 1e-2))
    assert type(opt).__name__ == EXPECTED_CLASS[name]
    if name == "adamw_bf16":
        assert type(opt).__module__.startswith("optimi")  # the Kahan-summing AdamW, not torch's
    if hasattr(opt, "train"):
        opt.train()
    (p.square().sum()).backward()
    opt.step()
    assert not torch.equal(p.detach(), torch.ones(4, 4))


def test_lion_updates_by_sign():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([p], TrainConfig(optimizer="lion", lr=0.1, weight_decay=0.0))
    p.grad = torch.tensor([5.0, -0.001, 2.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, -0.1]))


def test_adamw8bit_needs_cuda_with_a_clear_message():
    with pytest.raises(Exception, match=r"adamw8bit") as e:
        check_available(TrainConfig(optimizer="adamw8bit"), "cpu")
    assert "pip install bitsandbytes" in str(e.value) or "CUDA GPU" in str(e.value)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedules_warm_up_then_follow_their_curve(name):
    cfg = TrainConfig(scheduler=name, steps=110, warmup_steps=10, min_lr_ratio=0.1, num_cycles=2, power=2.0)
    assert lr_factor(0, cfg) == pytest.approx(1 / 11)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    end = lr_factor(109, cfg)
    if name.startswith("constant"):
        assert end == 1.0
    else:
        assert end < 0.2
    if name == "cosine":
        assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    if name == "cosine_with_restarts":
        assert lr_factor(60, cfg) > 0.9  # second cycle restarted near the top
    if name == "polynomial":
        assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.25)


def test_scheduler_drives_the_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = TrainConfig(scheduler="linear", steps=10, lr=1.0)
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.9) and lrs[-1] == pytest.approx(0.0)


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="train.optimizer 'sgdx'"):
        check_available(TrainConfig(optimizer="sgdx"), "cpu")


def test_schedulefree_exports_its_averaged_weights(tiny_backbone, tensor_cache, run_config, tmp_path):
    import dataclasses

    from lumina2_train.files.formats import read_lora
    from lumina2_train.train import Trainer

    cfg = run_config(tmp_path, steps=3, optimizer="adamw_schedulefree", lr=1e-2, caption_dropout=0.0)
    cfg = dataclasses.replace(cfg, save=dataclasses.replace(cfg.save, dtype="fp32"))
    trainer = Trainer(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "sf")
    result = trainer.run()
    saved = read_lora(result.lora_path, tiny_backbone.arch)
    name = "layers.0.attention.qkv"
    train_mode_up = result.adapters[name].up.detach().clone()
    trainer.setup.optimizer.eval()
    eval_up = result.adapters[name].up.detach() * result.adapters[name].scale
    assert not torch.allclose(train_mode_up * result.adapters[name].scale, saved[name].up, atol=1e-6)
    torch.testing.assert_close(saved[name].up, eval_up)
