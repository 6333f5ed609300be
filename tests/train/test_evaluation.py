"""Validation prompts from a library, CLIP scores, and held-out loss at fixed σ bins."""

import dataclasses
import json

import pytest
import torch

from lumina2_train.config import ValidationConfig
from lumina2_train.errors import ConfigError
from lumina2_train.train import TrainHooks, train_lora
from lumina2_train.train.evaluation import holdout_indices
from lumina2_train.train.validation import named_prompts

from builders import linear_decode


def _with_validation(cfg, **v):
    return dataclasses.replace(cfg, validation=dataclasses.replace(cfg.validation, **v))


@pytest.mark.slow
def test_prompt_library_names_prompts_and_files(tiny_backbone, tensor_cache, run_config, tmp_path):
    lib = tmp_path / "prompts.json"
    lib.write_text(json.dumps({"cube": "a red cube", "../evil name": "a red cube"}))
    v = ValidationConfig(prompts=("a red cube",), prompt_library=str(lib), width=32, height=32, steps=2)
    assert [n for n, _ in named_prompts(v)] == ["prompt_00", "cube", "../evil name"]
    cfg = _with_validation(run_config(tmp_path, steps=1), prompts=v.prompts, prompt_library=str(lib), width=32,
                           height=32, steps=2)
    res = train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "r", decode=linear_decode)
    names = sorted(p.name for p in (tmp_path / "r" / "samples").glob("step_000001_*.png"))
    assert names == ["step_000001____evil_name.png", "step_000001_cube.png", "step_000001_grid.png",
                     "step_000001_prompt_00.png"]
    assert res.validations[-1].names == ("prompt_00", "cube", "../evil name")


def test_prompt_library_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="validation.prompt_library"):
        named_prompts(ValidationConfig(prompt_library=str(bad)))
    assert "validation.prompt_library" in ValidationConfig(prompt_library=str(tmp_path / "no.json")).errors()[0]


@pytest.mark.slow
def test_clip_scores_are_computed_with_a_local_clip(tiny_backbone, tensor_cache, run_config, tmp_path):
    from lumina2_train.tiny.clip import write_tiny_clip

    clip = write_tiny_clip(tmp_path / "clip")
    cfg = _with_validation(run_config(tmp_path, steps=1), prompts=("a red cube",), width=32, height=32, steps=2,
                           evaluation_type="clip", clip_model=str(clip))
    res = train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "r", decode=linear_decode)
    scores = res.validations[-1].clip_scores
    assert len(scores) == 1 and 0.0 <= scores[0] <= 100.0


@pytest.mark.slow
def test_heldout_items_never_train_and_eval_loss_is_logged(tiny_backbone, tensor_cache, run_config, tmp_path,
                                                           monkeypatch):
    held = holdout_indices(len(tensor_cache), 1, 5)
    seen = []
    from lumina2_train.train import step as step_module

    real = step_module.collate

    def spy(cache, indices, *a, **k):
        seen.extend(indices)
        return real(cache, indices, *a, **k)

    monkeypatch.setattr("lumina2_train.train.prefetch.collate", spy)
    evals = []
    cfg = _with_validation(run_config(tmp_path, steps=4), eval_every_n_steps=2, eval_holdout=1,
                           eval_sigmas=(0.25, 0.75))
    res = train_lora(cfg, tiny_backbone, tensor_cache, TrainHooks(on_eval=lambda s, d: evals.append((s, d))),
                     run_dir=tmp_path / "r")
    assert held[0] not in seen and seen
    assert [s for s, _ in evals] == [0, 2, 4]
    assert all(set(d) == {0.25, 0.75} for _, d in evals)
    assert evals[0][1] != evals[-1][1]  # training moved the held-out loss
    logged = json.loads((res.run_dir / "losses.json").read_text())["eval"]
    assert [e["step"] for e in logged] == [0, 2, 4]


@pytest.mark.slow
def test_heldout_loss_is_deterministic(tiny_backbone, tensor_cache):
    from lumina2_train.train.evaluation import heldout_loss

    a = heldout_loss(tiny_backbone, None, tensor_cache, [0, 2], (0.5,), seed=1, device="cpu", dtype=torch.float32)
    b = heldout_loss(tiny_backbone, None, tensor_cache, [0, 2], (0.5,), seed=1, device="cpu", dtype=torch.float32)
    assert a == b
    with pytest.raises(ValueError, match="hold out fewer"):
        holdout_indices(4, 4, 0)
