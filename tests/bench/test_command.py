"""`bench` argument handling and its refusal without CUDA (CPU only; nothing is timed here)."""

import argparse

import pytest
import torch

from lumina2_train import cli
from lumina2_train.bench import command
from lumina2_train.bench.cases import REF_BUDGET, issue5_suite, issue14_suite, parse_budget


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    return p.parse_args(list(argv))


def test_defaults_are_the_reference_shape():
    (g,) = command.groups_from_args(_args())
    assert (g.res, g.batch, g.rank, g.targets, g.mode, g.caption_tokens, g.steps) == (1024, 4, 16, "attn", "lora",
                                                                                       256, 10)
    (v,) = g.variants
    assert v.compile and v.ckpt == "auto" and v.memory_budget_gib == REF_BUDGET and v.backbone == "diffusers"
    assert g.reference


def test_flags_reach_the_group_and_variant():
    (g,) = command.groups_from_args(_args("--res", "512", "--batch", "1", "--mode", "full", "--ckpt", "on",
                                          "--no-compile", "--memory-budget", "12.5", "--base-precision", "fp8",
                                          "--no-reference", "--steps", "3"))
    (v,) = g.variants
    assert (g.res, g.batch, g.mode, g.steps, g.reference) == (512, 1, "full", 3, False)
    assert (v.compile, v.ckpt, v.memory_budget_gib, v.base_precision) == (False, "on", 12.5, "fp8")
    assert v.label == "eager, ckpt on, fp8 base"


def test_fp8_flags_reach_the_variant_and_the_issue14_suite_holds_its_targets():
    (g,) = command.groups_from_args(_args("--base-compute", "fp8", "--saved-activations", "fp8", "--batch", "1"))
    (v,) = g.variants
    assert (v.base_compute, v.saved_activations) == ("fp8", "fp8")
    assert v.label == "compiled, ckpt auto, ≤ ref peak, fp8 compute, fp8 activations"
    with pytest.raises(command.BenchError, match="--saved-activations fp8 needs --ckpt auto or off"):
        command.groups_from_args(_args("--saved-activations", "fp8", "--ckpt", "on"))
    groups = command.groups_from_args(_args("--suite", "issue14"))
    targets = {(g.batch, g.mode, v.target_ratio, v.target_peak_gib, v.base_compute)
               for g in groups for v in g.variants if v.target_ratio}
    assert targets == {(4, "lora", 2.0, REF_BUDGET, "bf16"), (4, "lora", 2.5, REF_BUDGET, "fp8"),
                       (1, "lora", 2.5, 5.5, "fp8"), (1, "lora", 2.5, 3.5, "fp8"), (1, "full", 2.0, 16.0, "bf16")}
    assert all(not g.errors() for g in issue14_suite())


def test_every_wrong_argument_is_reported_at_once():
    with pytest.raises(command.BenchError) as e:
        command.groups_from_args(_args("--res", "1000", "--batch", "0", "--steps", "0"))
    msg = str(e.value)
    assert "--res must be a multiple of 16" in msg and "--batch must be >= 1" in msg and "--steps must be" in msg


def test_memory_budget_text():
    assert parse_budget("ref") == REF_BUDGET and parse_budget("6") == 6.0
    with pytest.raises(command.BenchError, match="--memory-budget 'lots'"):
        command.groups_from_args(_args("--memory-budget", "lots"))


def test_comfy_backbone_needs_a_comfyui_folder():
    with pytest.raises(command.BenchError, match="--backbone comfy needs a ComfyUI folder"):
        command.groups_from_args(_args("--backbone", "comfy", "--comfyui", ""))


def test_suite_covers_every_issue5_target_and_can_be_split():
    groups = command.groups_from_args(_args("--suite", "issue5"))
    assert [(g.res, g.batch, g.mode) for g in groups] == [(1024, 4, "lora"), (1024, 1, "lora"), (512, 4, "lora"),
                                                         (1024, 1, "full")]
    targets = [(g.batch, v.target_ratio, v.target_peak_gib) for g in groups for v in g.variants if v.target_ratio]
    assert (4, 2.5, REF_BUDGET) in targets and (1, 2.0, 6.0) in targets and (1, 2.0, 4.0) in targets
    assert (1, 1.5, 16.0) in targets and any(v.backbone == "comfy" for v in groups[0].variants)
    assert command.groups_from_args(_args("--suite", "issue5", "--groups", "1,3")) == [groups[1], groups[3]]
    with pytest.raises(command.BenchError, match="outside 0-3"):
        command.groups_from_args(_args("--suite", "issue5", "--groups", "7"))
    assert all(not g.errors() for g in issue5_suite())


def test_refuses_without_cuda_with_a_clear_message(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(command.BenchError, match=r"no CUDA GPU here .* run the bench there"):
        command.run(_args())
    assert cli.main(["bench", "--steps", "2"]) == 2
    assert "no CUDA GPU here" in caplog.text


def test_bad_arguments_fail_before_the_cuda_check(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(command.BenchError, match="--batch must be >= 1"):
        command.run(_args("--batch", "0"))
