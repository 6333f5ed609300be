"""Bad input to a whole run (CLI and pipeline) on tiny real models: every problem is a message naming the field
and the file, found before a model loads; Ctrl-C ends with its message and status 130, no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lumina2_train.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Tiny diffusers-layout models and a captioned dataset of two images, written once."""
    from lumina2_train.tiny import write_tiny_diffusers

    from builders import write_image

    base = tmp_path_factory.mktemp("bad_run")
    models = write_tiny_diffusers(base / "models", seed=0)
    for i in range(2):
        write_image(base / "data" / f"img{i}.png", (64, 64), caption=f"a picture number {i}", seed=i)
    return {"models": models, "data": base / "data"}


def run_dict(tiny_run, out: Path, **sections) -> dict:
    """A run config (as a dict) on the tiny models, writing under `out`; `sections` update single keys."""
    m = tiny_run["models"]
    d = {"data": {"datasets": [{"path": str(tiny_run["data"]), "resolution": 64, "min_size_px": 32}]},
         "model": {k: str(m[k]) for k in ("transformer", "text_encoder", "tokenizer", "vae")} | {"dtype": "fp32"},
         "adapter": {"rank": 4, "alpha": 4.0},
         "train": {"steps": 2, "batch_size": 1, "precision": "fp32", "checkpointing": "off"},
         "save": {"output_dir": str(out / "runs"), "name": "bad"},
         "cache": {"dir": str(out / "cache")}}
    for key, value in sections.items():
        section, _, name = key.partition("__")
        d.setdefault(section, {})[name] = value
    return d


def run_config(tiny_run, out: Path, **sections) -> RunConfig:
    return RunConfig.from_dict(run_dict(tiny_run, out, **sections))


def nothing_cached(out: Path) -> bool:
    """True when no cache entry was written: the run stopped before any encoder ran."""
    cache = out / "cache"
    return not cache.exists() or not any(p.is_file() for p in cache.rglob("*.safetensors"))


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_ends_with_its_message_and_status_130_without_a_traceback(tiny_run, tmp_path):
    """Fails before the fix: the KeyboardInterrupt re-raised after the checkpoint reached the top of the CLI and
    printed a traceback (status 1)."""
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(run_dict(tiny_run, tmp_path, train__steps=100000, save__every_n_steps=1,
                                       save__keep_last=1)))
    child = subprocess.Popen([sys.executable, "-m", "lumina2_train", "train", str(cfg)], cwd=tmp_path,
                             env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "runs").glob("bad*/checkpoints/step_*")):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" in err  # the run's own line names what stopped it
    assert "resumable checkpoint at" in err and "stopped by Ctrl-C" in err and "--resume" in err


# ---------------------------------------------------------------- adapter.blocks against the model's depth


def test_out_of_range_blocks_are_refused_before_caching_naming_the_field(tiny_run, tmp_path):
    """Fails before the fix: parse_block_spec's bare ValueError came from the trainer, after the cache was built."""
    from lumina2_train.errors import ConfigError
    from lumina2_train.pipeline import run_training

    cfg = run_config(tiny_run, tmp_path, adapter__blocks="0,5-7")
    with pytest.raises(ConfigError) as e:
        run_training(cfg)
    msg = str(e.value)
    assert "adapter.blocks '0,5-7' has '5-7', outside 0-1" in msg and "has 2 layers (0-1)" in msg, msg
    assert str(tiny_run["models"]["transformer"]) in msg
    assert nothing_cached(tmp_path)


def test_blocks_are_checked_against_a_single_file_header_and_the_loaded_model(tiny_run, tmp_path):
    from safetensors.torch import save_file

    from lumina2_train.adapters.targets import select_targets
    from lumina2_train.backbones.diffusers import DiffusersBackbone
    from lumina2_train.config import AdapterConfig
    from lumina2_train.errors import ConfigError
    from lumina2_train.files.loading import layer_count
    from lumina2_train.tiny import make_tiny_transformer

    backbone = DiffusersBackbone.from_model(make_tiny_transformer(0))
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in backbone.tree.state_dict().items()}
    save_file(sd, tmp_path / "all_in_one.safetensors")
    assert layer_count(tmp_path / "all_in_one.safetensors") == 2 == layer_count(tiny_run["models"]["transformer"])
    assert layer_count(tmp_path / "missing.safetensors") is None
    # inside ComfyUI the depth is known only from the MODEL: the trainer's selection names the field too
    with pytest.raises(ConfigError, match=r"adapter.blocks '2' has '2', outside 0-1: the model has 2 layers"):
        select_targets(backbone.arch, AdapterConfig(blocks="2"))


# ---------------------------------------------------------------- resume after the dataset or settings changed


@pytest.mark.slow
def test_resume_after_the_dataset_changed_is_refused_and_harmless_changes_are_logged(tiny_run, tmp_path, caplog):
    """Through the whole pipeline on a scanned dataset. Fails before the fix: the other repeats and the added
    image resumed silently, and the raised step count was not logged."""
    import logging
    import shutil

    from lumina2_train.errors import CheckpointError
    from lumina2_train.pipeline import run_training

    data = tmp_path / "data"
    shutil.copytree(tiny_run["data"], data)
    own = {**tiny_run, "data": data}
    first = run_training(run_config(own, tmp_path, train__steps=1))
    folder = str(first.run_dir)
    ds = run_dict(own, tmp_path)["data"]["datasets"][0]
    repeats = run_dict(own, tmp_path, train__steps=2) | {"resume_from": folder}
    repeats["data"]["datasets"] = [{**ds, "repeats": 2}]
    with pytest.raises(CheckpointError, match=r"data position no longer means the same batches \(the trained images"
                       r".*data.datasets\[0\].repeats: checkpoint 1, now 2\). Resume with the checkpoint's settings"):
        run_training(RunConfig.from_dict(repeats))
    from builders import write_image

    write_image(data / "img9.png", (64, 64), caption="a new picture", seed=9)
    with pytest.raises(CheckpointError, match=r"\(the trained images, captions, buckets, repeats or their order "
                       r"\(data order [0-9a-f]{16}, now [0-9a-f]{16}\)\)"):
        run_training(RunConfig.from_dict(run_dict(own, tmp_path, train__steps=2) | {"resume_from": folder}))
    (data / "img9.png").unlink()
    (data / "img9.txt").unlink()
    with caplog.at_level(logging.WARNING, logger="lumina2_train.train.resume"):
        res = run_training(RunConfig.from_dict(run_dict(own, tmp_path, train__steps=2) | {"resume_from": folder}))
    assert res.step == 2 and "train.steps: checkpoint 1, now 2" in caplog.text, caplog.text
