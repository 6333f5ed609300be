"""The whole bench path on the CPU with a tiny model: reference and ours through the Trainer, tables, JSON."""

import json

import pytest
import torch

from lumina2_train.bench.cases import REF_BUDGET, Group, Variant
from lumina2_train.bench.report import render
from lumina2_train.bench.runner import run_bench, run_config
from lumina2_train.tiny import TINY_DIT


@pytest.mark.slow
def test_tiny_bench_runs_end_to_end():
    target = Variant("eager, auto", compile=False, memory_budget_gib=REF_BUDGET, target_ratio=2.5,
                     target_peak_gib=REF_BUDGET)
    groups = [Group("tiny LoRA", res=64, batch=2, rank=4, caption_tokens=7, steps=1, warmup=1,
                    variants=(Variant("eager, ckpt on", compile=False, ckpt="on"), target,
                              Variant("ComfyUI", compile=False, backbone="comfy"),
                              Variant("fp8", compile=False, base_compute="fp8"))),
              Group("tiny full", res=64, batch=1, mode="full", caption_tokens=7, steps=1, warmup=1,
                    variants=(Variant("full", compile=False, memory_budget_gib=16.0),))]
    report, text = run_bench(groups, device=torch.device("cpu"), config=dict(TINY_DIT))
    lora, full = report["groups"]
    assert lora["parity"]["loss_rel_diff"] < 1e-3 and lora["flops_per_sample"] > 0
    ok = [v for v in lora["variants"] if "error" not in v]
    assert [v["label"] for v in ok] == ["eager, ckpt on", "eager, auto"]
    assert all(v["samples_per_s"] > 0 and v["ratio"] > 0 for v in ok)
    assert "no ComfyUI tree" in lora["variants"][2]["error"]  # recorded, and the run went on
    assert "model.base_compute 'fp8'" in lora["variants"][3]["error"]  # refused on a device without fp8
    assert "error" not in full["variants"][0] and full["reference"]["samples_per_s"] > 0
    assert "| reference (diffusers + PEFT, eager, ckpt) |" in text and "tiny LoRA: eager, auto" in text
    assert render(json.loads(json.dumps(report, default=str))) == text


def test_variant_settings_become_the_run_config(tmp_path):
    g = Group("g", batch=4, mode="full")
    cfg = run_config(g, Variant(ckpt="auto", base_precision="fp8"), 16.0, str(tmp_path))
    t = cfg.train
    assert cfg.adapter.kind == "full" and t.optimizer_in_backward and t.optimizer_states == "8bit"
    assert t.memory_budget_gib == 16.0 and t.compile and t.checkpointing == "auto" and t.max_grad_norm == 0
    assert cfg.model.base_precision == "fp8" and cfg.model.base_compute == "bf16"
    fp8 = run_config(g, Variant(base_compute="fp8", saved_activations="fp8"), 16.0, str(tmp_path))
    assert fp8.model.base_compute == "fp8" and fp8.train.saved_activations == "fp8"
    lora = run_config(Group("g"), Variant(compile=False, ckpt="on"), 0.0, str(tmp_path))
    assert lora.adapter.targets == ("attention",) and lora.adapter.rank == 16 and not lora.train.compile


@pytest.mark.slow
def test_profile_records_where_device_time_goes(tmp_path):
    from lumina2_train.bench.profile import kernel_class

    groups = [Group("tiny", res=64, batch=1, rank=4, caption_tokens=7, steps=1, warmup=1, reference=False,
                    variants=(Variant("eager", compile=False, ckpt="on"),))]
    report, text = run_bench(groups, device=torch.device("cpu"), config=dict(TINY_DIT), attention=False,
                             profile_dir=tmp_path)
    prof = report["groups"][0]["variants"][0]["profile"]
    assert prof["device_ms_per_step"] > 0 and prof["kernels"]
    assert abs(sum(prof["classes"].values()) - 1.0) < 1e-6
    assert any(k["class"] == "matmul" for k in prof["kernels"])  # aten::mm / addmm on the CPU
    assert json.loads((tmp_path / "tiny--eager.json").read_text())  # a chrome trace
    assert "#### Profile: tiny / eager" in text and "| matmul |" in text
    assert kernel_class("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert kernel_class("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert kernel_class("triton_poi_fused_add_mul_0") == "fused elementwise (compiled)"
