"""EMA of the trained weights: the maths, the exported file, validation and exact resume."""

import dataclasses

import pytest
import torch

from lumina2_train.files.formats import read_lora
from lumina2_train.train import Trainer, train_lora
from lumina2_train.train.ema import EMA


def test_ema_follows_the_warmup_decay_formula():
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.9, every_n_steps=2)
    expected = 0.0
    for step in range(1, 7):
        with torch.no_grad():
            m.weight.fill_(float(step))
        if step % 2 == 0:
            d = min(0.9, (1 + ema.updates) / (10 + ema.updates))
            expected = d * expected + (1 - d) * step
        ema.update(step)
    assert ema.updates == 3
    assert ema.shadow["weight"].item() == pytest.approx(expected)
    with ema.swapped_in():
        assert m.weight.item() == pytest.approx(expected)
    assert m.weight.item() == 6.0


def _ema_cfg(run_config, tmp_path, **save):
    cfg = run_config(tmp_path, steps=4, use_ema=True, ema_decay=0.5, lr=1e-2)
    return dataclasses.replace(cfg, save=dataclasses.replace(cfg.save, dtype="fp32", **save))


@pytest.mark.slow
def test_saved_lora_holds_the_ema_weights_when_asked(tiny_backbone, tensor_cache, run_config, tmp_path):
    name = "layers.1.feed_forward.w2"
    trainer = Trainer(_ema_cfg(run_config, tmp_path), tiny_backbone, tensor_cache, run_dir=tmp_path / "e")
    res = trainer.run()
    saved = read_lora(res.lora_path, tiny_backbone.arch)[name]
    raw = res.adapters[name]
    with trainer.setup.ema.swapped_in():
        torch.testing.assert_close(saved.up, raw.up.detach() * raw.scale)
    assert not torch.allclose(saved.up, raw.up.detach() * raw.scale)
    res_raw = train_lora(_ema_cfg(run_config, tmp_path, save_ema=False), tiny_backbone, tensor_cache,
                         run_dir=tmp_path / "r")
    raw2 = res_raw.adapters[name]
    torch.testing.assert_close(read_lora(res_raw.lora_path, tiny_backbone.arch)[name].up,
                               raw2.up.detach() * raw2.scale)


@pytest.mark.slow
def test_resume_with_ema_is_exact(tiny_backbone, tensor_cache, run_config, tmp_path):
    full = Trainer(_ema_cfg(run_config, tmp_path), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    full.run()
    half = _ema_cfg(run_config, tmp_path)
    train_lora(dataclasses.replace(half, train=dataclasses.replace(half.train, steps=2)), tiny_backbone,
               tensor_cache, run_dir=tmp_path / "b")
    resumed = Trainer(dataclasses.replace(half, resume_from=str(tmp_path / "b")), tiny_backbone, tensor_cache,
                      run_dir=tmp_path / "b")
    resumed.run()
    for k, v in full.setup.ema.shadow.items():
        torch.testing.assert_close(resumed.setup.ema.shadow[k], v, atol=1e-7, rtol=1e-6)
