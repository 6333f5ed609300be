"""The loop: exact resume, checkpoints on interrupt, non-finite handling, hooks."""

import json

import pytest
import torch

from lumina2_train.errors import CheckpointError, TrainingError
from lumina2_train.train import TrainHooks, train_lora
from lumina2_train.train.checkpoint import list_checkpoints


def test_resume_continues_exactly(run_config, tiny_backbone, tensor_cache, tmp_path):
    full = train_lora(run_config(tmp_path, steps=4), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    train_lora(run_config(tmp_path, steps=2), tiny_backbone, tensor_cache, run_dir=tmp_path / "b")
    resumed = train_lora(run_config(tmp_path, steps=4, resume_from=str(tmp_path / "b")), tiny_backbone,
                         tensor_cache, run_dir=tmp_path / "b")
    assert resumed.step == 4
    assert resumed.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-9)
    for name, mod in full.adapters.items():
        torch.testing.assert_close(resumed.adapters[name].up, mod.up, atol=1e-7, rtol=1e-6)


def test_resume_with_other_settings_is_refused(run_config, tiny_backbone, tensor_cache, tmp_path):
    train_lora(run_config(tmp_path, steps=1), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    cfg = run_config(tmp_path, steps=2, batch_size=1, resume_from=str(tmp_path / "a"))
    with pytest.raises(CheckpointError, match=r"train.batch_size: checkpoint 2, now 1"):
        train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "a")


class Stop(Exception):
    pass


def test_interrupt_leaves_a_resumable_checkpoint(run_config, tiny_backbone, tensor_cache, tmp_path):
    seen = []

    def on_step(info):
        seen.append(info.step)

    def check():
        if len(seen) == 3:
            raise Stop("cancelled")

    with pytest.raises(Stop):
        train_lora(run_config(tmp_path, steps=10), tiny_backbone, tensor_cache,
                   TrainHooks(on_step=on_step, check_interrupt=check), run_dir=tmp_path / "r")
    ckpts = list_checkpoints(tmp_path / "r" / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000003"]
    assert json.loads((ckpts[0] / "state.json").read_text())["step"] == 3
    res = train_lora(run_config(tmp_path, steps=5, resume_from=str(tmp_path / "r")), tiny_backbone,
                     tensor_cache, run_dir=tmp_path / "r")
    assert res.step == 5 and len(res.losses) == 5


def test_nonfinite_loss_stops_with_step_bucket_and_lr(run_config, tiny_backbone, tensor_cache, tmp_path):
    tensor_cache.samples[0] = tensor_cache.samples[0].__class__(
        latent=torch.full((16, 4, 4), float("nan")), cap_feats=tensor_cache.samples[0].cap_feats)
    with pytest.raises(TrainingError, match=r"step \d+ gave a non-finite loss nan \(bucket 32x32, lr 0.001\)"):
        train_lora(run_config(tmp_path, steps=6, batch_size=1), tiny_backbone, tensor_cache, run_dir=tmp_path / "n")
    assert list_checkpoints(tmp_path / "n" / "checkpoints")


def test_step_hook_payload_and_outputs(run_config, tiny_backbone, tensor_cache, tmp_path):
    infos = []
    res = train_lora(run_config(tmp_path, steps=3, grad_accum=2), tiny_backbone, tensor_cache,
                     TrainHooks(on_step=infos.append), run_dir=tmp_path / "o")
    assert [i.step for i in infos] == [1, 2, 3]
    d = infos[-1].as_dict()
    assert {"step", "loss", "lr", "sigma", "samples_per_s", "eta_s"} <= set(d)
    assert res.lora_path.is_file() and (tmp_path / "o" / "config.json").is_file()
    assert json.loads((tmp_path / "o" / "losses.json").read_text())["loss"] == pytest.approx(res.losses)
