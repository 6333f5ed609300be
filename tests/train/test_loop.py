"""The loop: exact resume, checkpoints on interrupt, non-finite handling, hooks."""

import json
import logging
import re

import pytest
import torch

from lumina2_train.errors import CheckpointError, TrainingError
from lumina2_train.train import TrainHooks, train_lora
from lumina2_train.train.checkpoint import list_checkpoints, load_checkpoint


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


# ---------------------------------------------------------------- faults inside a step (issue 9, items 2 and 3)


class _Fault:
    """Counts velocity calls since the last finished step and calls `fail` at the given (step, call)."""

    def __init__(self, backbone, monkeypatch, at_step: int, at_call: int, fail):
        self.real, self.done, self.calls = backbone.velocity, 0, 0
        self.at_step, self.at_call, self.fail = at_step, at_call, fail
        monkeypatch.setattr(backbone, "velocity", self.velocity)

    def on_step(self, info):
        self.done, self.calls = info.step, 0

    def velocity(self, *a, **k):
        self.calls += 1
        out = self.real(*a, **k)
        if self.done + 1 == self.at_step and self.calls == self.at_call:
            return self.fail(out)
        return out


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def _oom(_out):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_keeps_its_type_adds_advice_and_resumes_exactly(run_config, tiny_backbone, tensor_cache,
                                                                      tmp_path, monkeypatch):
    """An OOM in the 2nd micro-step of step 3 (injected: no CUDA here): same type, our levers, checkpoint of
    step 2 whose data position is step 2's, so the resumed run equals an uninterrupted one."""
    full = train_lora(run_config(tmp_path, steps=5, grad_accum=2), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    fault = _Fault(tiny_backbone, monkeypatch, at_step=3, at_call=2, fail=_oom)
    with pytest.raises(torch.OutOfMemoryError) as err:
        train_lora(run_config(tmp_path, steps=5, grad_accum=2), tiny_backbone, tensor_cache,
                   TrainHooks(on_step=fault.on_step), run_dir=tmp_path / "b")
    assert type(err.value) is torch.cuda.OutOfMemoryError  # ComfyUI's execution.py matches this type
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
    msg = str(err.value)
    assert "Tried to allocate 20.00 GiB" in msg and "resumable checkpoint" in msg
    for lever in ("batch_size", "largest bucket", "checkpointing", "quantised base"):
        assert lever in msg, lever
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step_00000002"]
    monkeypatch.undo()
    resumed = train_lora(run_config(tmp_path, steps=5, grad_accum=2, resume_from=str(tmp_path / "b")),
                         tiny_backbone, tensor_cache, run_dir=tmp_path / "b")
    assert resumed.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-9)


def test_cancel_between_micro_steps_keeps_the_exception_and_resumes_exactly(run_config, tiny_backbone, tensor_cache,
                                                                            tmp_path):
    full = train_lora(run_config(tmp_path, steps=4, grad_accum=3), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    done, checks, raised = [], [], Stop("cancelled by the user")

    def check():  # ComfyUI's throw_exception_if_processing_interrupted, pressed during step 3
        checks.append(len(done))
        if len(done) == 2 and checks.count(2) == 2:
            raise raised

    with pytest.raises(Stop) as err:
        train_lora(run_config(tmp_path, steps=4, grad_accum=3), tiny_backbone, tensor_cache,
                   TrainHooks(on_step=lambda i: done.append(i.step), check_interrupt=check), run_dir=tmp_path / "b")
    assert err.value is raised  # the very exception ComfyUI raised, so its own handling runs
    assert checks.count(2) == 2  # checked again inside the step, not only between steps
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step_00000002"]
    resumed = train_lora(run_config(tmp_path, steps=4, grad_accum=3, resume_from=str(tmp_path / "b")),
                         tiny_backbone, tensor_cache, run_dir=tmp_path / "b")
    assert resumed.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-9)


def test_nonfinite_gradient_stops_after_saving_the_last_good_state(run_config, tiny_backbone, tensor_cache, tmp_path,
                                                                   monkeypatch):
    full = train_lora(run_config(tmp_path, steps=4), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    fault = _Fault(tiny_backbone, monkeypatch, at_step=3, at_call=1, fail=_NanGradient.apply)
    with pytest.raises(TrainingError) as err:
        train_lora(run_config(tmp_path, steps=4), tiny_backbone, tensor_cache, TrainHooks(on_step=fault.on_step),
                   run_dir=tmp_path / "n")
    msg = str(err.value)
    assert re.search(r"step 3 gave a non-finite gradient norm nan \(bucket \d+x\d+, lr 0.001\)", msg), msg
    assert "step_00000002" in msg and "train.on_nonfinite" in msg
    saved = load_checkpoint(tmp_path / "n")
    assert saved.step == 2 and all(torch.isfinite(t).all() for t in saved.adapter.values())
    monkeypatch.undo()  # the cause is gone: the saved state continues exactly
    resumed = train_lora(run_config(tmp_path, steps=4, resume_from=str(tmp_path / "n")), tiny_backbone,
                         tensor_cache, run_dir=tmp_path / "n")
    assert resumed.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-9)


def test_nonfinite_gradient_can_skip_the_step(run_config, tiny_backbone, tensor_cache, tmp_path, monkeypatch, caplog):
    fault = _Fault(tiny_backbone, monkeypatch, at_step=2, at_call=1, fail=_NanGradient.apply)
    with caplog.at_level(logging.WARNING, logger="lumina2_train.train.loop"):
        res = train_lora(run_config(tmp_path, steps=3, on_nonfinite="skip"), tiny_backbone, tensor_cache,
                         TrainHooks(on_step=fault.on_step), run_dir=tmp_path / "s")
    assert res.step == 3 and all(torch.isfinite(p).all() for p in res.adapters.parameters())
    assert re.search(r"step 2: gradient norm nan \(bucket \d+x\d+, lr 0.001\); the update was skipped", caplog.text)


def test_checkpoint_that_needs_code_to_load_is_refused_unexecuted(run_config, tiny_backbone, tensor_cache, tmp_path):
    train_lora(run_config(tmp_path, steps=1), tiny_backbone, tensor_cache, run_dir=tmp_path / "r")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (ckpt,) = list_checkpoints(tmp_path / "r" / "checkpoints")
    torch.save({"optimizer": Evil(), "scheduler": {}, "rng": {}}, ckpt / "training_state.pt")
    with pytest.raises(CheckpointError, match=r"step_00000001: this checkpoint cannot be read \(Weights only load"):
        train_lora(run_config(tmp_path, steps=2, resume_from=str(tmp_path / "r")), tiny_backbone, tensor_cache,
                   run_dir=tmp_path / "r")
    assert not marker.exists()
    (ckpt / "adapter.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="this checkpoint cannot be read"):
        load_checkpoint(ckpt)


def test_resume_with_another_adapter_is_refused(run_config, tiny_backbone, tensor_cache, tmp_path):
    import dataclasses

    train_lora(run_config(tmp_path, steps=1), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    cfg = run_config(tmp_path, steps=2, resume_from=str(tmp_path / "a"))
    cfg = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, rank=8))
    with pytest.raises(CheckpointError, match=r"adapter.rank: checkpoint 4, now 8.*start a new run"):
        train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "a")


def test_resume_refuses_another_optimizer_state_layout(run_config, tiny_backbone, tensor_cache, tmp_path):
    train_lora(run_config(tmp_path, steps=1), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    cfg = run_config(tmp_path, steps=2, resume_from=str(tmp_path / "a"), optimizer_states="8bit")
    with pytest.raises(CheckpointError, match=r"train.optimizer_states: checkpoint 'fp32', now '8bit'"):
        train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "a")


# ---------------------------------------------------------------- resume after the dataset or settings changed


def _resume_cfg(run_config, tmp_path, **kw):
    return run_config(tmp_path, steps=kw.pop("steps", 2), resume_from=str(tmp_path / "a"), **kw)


def test_resume_after_the_dataset_changed_is_refused_naming_the_fix(run_config, tiny_backbone, tensor_cache,
                                                                     tmp_path):
    """Fails before the fix: every one of these resumed silently from a data position meaning other batches."""
    import copy
    import dataclasses

    from lumina2_train.config import ValidationConfig

    train_lora(run_config(tmp_path, steps=1), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    more = copy.copy(tensor_cache)
    more.sample_repeats = {0: 3}  # repeats of one image
    recaptioned = copy.copy(tensor_cache)
    recaptioned.samples = [dataclasses.replace(s, caption="other") if i == 1 else s
                           for i, s in enumerate(tensor_cache.samples)]
    fewer = copy.copy(tensor_cache)
    fewer.samples = tensor_cache.samples[:3]  # an image removed
    for cache in (more, recaptioned, fewer):
        with pytest.raises(CheckpointError, match=r"data position no longer means the same batches \(the trained "
                           r"images, captions, buckets, repeats or their order \(data order [0-9a-f]{16}, now "
                           r"[0-9a-f]{16}\)\)\. Resume with the checkpoint's settings and dataset.*start a new run"):
            train_lora(_resume_cfg(run_config, tmp_path), tiny_backbone, cache, run_dir=tmp_path / "a")
    held = dataclasses.replace(_resume_cfg(run_config, tmp_path), validation=ValidationConfig(eval_holdout=1))
    with pytest.raises(CheckpointError, match=r"validation.eval_holdout: checkpoint 0, now 1"):
        train_lora(held, tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"train.seed: checkpoint 5, now 6.*train.grad_accum"
                       r"|train.grad_accum: checkpoint 1, now 2.*train.seed: checkpoint 5, now 6"):
        train_lora(_resume_cfg(run_config, tmp_path, seed=6, grad_accum=2), tiny_backbone, tensor_cache,
                   run_dir=tmp_path / "a")


def test_resume_with_harmless_changes_continues_and_logs_each_field(run_config, tiny_backbone, tensor_cache,
                                                                     tmp_path, caplog):
    """Fails before the fix: the changes were accepted without a word."""
    import dataclasses

    from lumina2_train.config import SaveConfig

    train_lora(run_config(tmp_path, steps=2), tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    cfg = _resume_cfg(run_config, tmp_path, steps=3, max_grad_norm=0.5)
    cfg = dataclasses.replace(cfg, save=SaveConfig(output_dir=str(tmp_path), every_n_steps=5))
    with caplog.at_level(logging.WARNING, logger="lumina2_train.train.resume"):
        res = train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    assert res.step == 3
    assert "resuming with settings that changed but keep the data position" in caplog.text
    for line in ("train.steps: checkpoint 2, now 3", "save.every_n_steps: checkpoint 0, now 5",
                 "train.max_grad_norm: checkpoint 1.0, now 0.5"):
        assert line in caplog.text, caplog.text
    assert "resume_from" not in caplog.text  # the resume itself is not a change
