"""Trackers as hooks: combine_hooks, TensorBoard event files, an offline W&B run, missing packages, no-network mode."""

import dataclasses
import json
import socket
import struct
import time

import pytest

from lumina2_train.config import TrackingConfig, ValidationConfig
from lumina2_train.errors import OptionalDependencyError
from lumina2_train.train import StepInfo, TrainHooks, combine_hooks, trackers, train_lora

from builders import linear_decode

STEP_TAGS = {"train/loss", "train/lr", "train/sigma", "train/grad_norm", "train/samples_per_s"}


def _tracked(cfg, **tracking):
    return dataclasses.replace(cfg, tracking=TrackingConfig(**tracking),
                               validation=ValidationConfig(prompts=("a red cube",), width=32, height=32, steps=2))


def _train_tracked(cfg, tiny_backbone, tensor_cache, run_dir):
    hooks, close = trackers.tracker_hooks(cfg, run_dir)
    try:
        return train_lora(cfg, tiny_backbone, tensor_cache, hooks, run_dir=run_dir, decode=linear_decode)
    finally:
        close()


def test_combine_hooks_calls_every_hook_in_order():
    seen = []
    a = TrainHooks(on_step=lambda i: seen.append(("a", i.step)), extra={"x": 1})
    b = TrainHooks(on_step=lambda i: seen.append(("b", i.step)), on_lora_saved=lambda p, s: seen.append(("saved", s)),
                   check_interrupt=lambda: (_ for _ in ()).throw(KeyboardInterrupt()), extra={"y": 2})
    both = combine_hooks(a, None, b)
    both.on_step(StepInfo(3, 5, 0.1, 1e-4, 0.5, 1.0, 1.0, 0, "32x32"))
    both.on_lora_saved("f.safetensors", 3)
    assert seen == [("a", 3), ("b", 3), ("saved", 3)] and both.extra == {"x": 1, "y": 2}
    with pytest.raises(KeyboardInterrupt):
        both.check_interrupt()
    both.on_eval(1, {})  # no hook defines it: a no-op


def test_tensorboard_events_hold_step_scalars_images_and_the_lora_path(run_config, tiny_backbone, tensor_cache,
                                                                       tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _tracked(run_config(tmp_path, steps=3), report_to=("tensorboard",), log_every_n_steps=2)
    res = _train_tracked(cfg, tiny_backbone, tensor_cache, tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "logs" / "run"), size_guidance={"tensors": 0}).Reload()
    assert STEP_TAGS <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 3]  # every 2nd step, and the last
    assert acc.Scalars("train/loss")[-1].value == pytest.approx(res.losses[-1], rel=1e-5)
    assert [e.step for e in acc.Images("validation/prompt_00")] == [0, 3]  # before and after training
    texts = {t: acc.Tensors(t)[-1].tensor_proto.string_val[0].decode() for t in acc.Tags()["tensors"]}
    assert texts["lora_path/text_summary"] == str(res.lora_path)
    assert '"report_to"' in texts["config/text_summary"]


def _wandb_records(run_file):
    """The protobuf records of a .wandb file (LevelDB log blocks of 32 KiB after a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf, out = run_file.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_offline_run_holds_the_history(run_config, tiny_backbone, tensor_cache, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": tmp_path / "wandb_dir",
                       "WANDB_CONFIG_DIR": tmp_path / "wandb_config", "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
                       "WANDB_DATA_DIR": tmp_path / "wandb_data"}.items():
        monkeypatch.setenv(var, str(value))
    cfg = _tracked(run_config(tmp_path, steps=2), report_to=("wandb",), project="p", run_name="offline-test")
    res = _train_tracked(cfg, tiny_backbone, tensor_cache, tmp_path / "run")
    wandb.teardown()  # run.finish() may return before the background service has written the run file
    (run_file,) = (tmp_path / "run" / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    losses = [json.loads(h["train/loss"]) for h in history if "train/loss" in h]
    assert losses == pytest.approx(res.losses, rel=1e-5)
    images = [h for h in history if "validation/prompt_00/_type" in h]  # before and after training
    assert len(images) == 2 and json.loads(images[-1]["validation/prompt_00/caption"]) == "a red cube"
    assert STEP_TAGS <= set(history[-1])
    summary = {i.key: i.value_json for r in records if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert json.loads(summary["lora_path"]) == str(res.lora_path)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name) == ("p", "offline-test")


def test_a_missing_tracker_package_names_the_pip_command(run_config, tmp_path, monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    cfg = dataclasses.replace(run_config(tmp_path), tracking=TrackingConfig(report_to=("wandb",)))
    with pytest.raises(OptionalDependencyError, match="pip install wandb"):
        trackers.check_trackers(cfg)
    trackers.check_trackers(dataclasses.replace(cfg, tracking=TrackingConfig(report_to=("none",))))


def test_no_tracker_means_plain_hooks(run_config, tmp_path):
    hooks, close = trackers.tracker_hooks(run_config(tmp_path), tmp_path / "run")
    close()
    assert not (tmp_path / "run").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: connections are refused


def test_wandb_goes_offline_quickly_without_network(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    assert trackers.wandb_mode(timeout_s=1.0) == "offline"
    assert time.perf_counter() - start < 2.0
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trackers.wandb_mode() == "disabled"
    assert not trackers.is_reachable("http://unresolvable.invalid:80", timeout_s=0.5)


def test_tracking_config_errors_name_the_field():
    assert "tracking.report_to 'mlflow' is unknown" in TrackingConfig(report_to=("mlflow",)).errors()[0]
    assert "mixes 'none'" in TrackingConfig(report_to=("none", "wandb")).errors()[0]
    assert "tracking.log_every_n_steps must be >= 1" in TrackingConfig(log_every_n_steps=0).errors()[0]
