"""train.precision -> the step's dtype: bf16 where the device runs bf16 matmuls natively, fp32 where bf16 would
go through PyTorch's reference GEMM (a CPU without AVX512-BF16/AMX)."""

import torch

from lumina2_train.train import speed
from lumina2_train.train.speed import compute_dtype


def test_fp32_is_fp32_everywhere():
    assert compute_dtype("fp32", torch.device("cpu")) is torch.float32
    assert compute_dtype("fp32", torch.device("cuda")) is torch.float32


def test_bf16_on_a_gpu_stays_bf16():
    assert compute_dtype("bf16", torch.device("cuda")) is torch.bfloat16


def test_bf16_on_a_cpu_follows_its_native_support(monkeypatch):
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: False)
    assert compute_dtype("bf16", torch.device("cpu")) is torch.float32
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    assert compute_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_the_probe_answers_on_this_machine():
    assert isinstance(speed.cpu_has_bf16(), bool)
