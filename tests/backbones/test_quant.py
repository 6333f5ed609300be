"""8-bit storage of the frozen base: close to bf16, smaller, never applied to a shared ComfyUI model."""

import pytest
import torch

from lumina2_train.backbones.quant import quantize_base, quantize_weight
from lumina2_train.errors import ConfigError


@pytest.mark.parametrize("fmt, tol", [("fp8", 0.08), ("int8", 0.02)])
def test_quantized_base_stays_close(tiny_backbone, fmt, tol):
    """Through every block of the tiny model; fp8 e4m3 keeps 3 mantissa bits, int8 7 bits of each row's range."""
    x, s, f = torch.randn(2, 16, 8, 8), torch.rand(2), torch.randn(2, 5, 32)
    with torch.no_grad():
        ref = tiny_backbone.velocity(x, s, f, None)
        saved = quantize_base(tiny_backbone, fmt)
        out = tiny_backbone.velocity(x, s, f, None)
    assert saved > 0
    assert tiny_backbone.linear("layers.0.feed_forward.w1").weight.element_size() == 1
    assert tiny_backbone.linear("x_embedder").weight.dtype == torch.float32  # embedders are kept
    assert (out - ref).norm() / ref.norm() < tol


def test_weight_rounding_is_per_row():
    w = torch.randn(8, 64) * torch.logspace(-3, 0, 8)[:, None]
    q, scale = quantize_weight(w, "int8")
    assert q.dtype == torch.int8 and scale.shape == (8, 1)
    assert ((q.float() * scale - w).abs() <= scale / 2 + 1e-9).all()


def test_base_weight_is_dequantised(tiny_backbone):
    before = tiny_backbone.base_weight("layers.1.attention.qkv").clone()
    quantize_base(tiny_backbone, "int8")
    after = tiny_backbone.base_weight("layers.1.attention.qkv")
    assert after.dtype == torch.float32 and (after - before).norm() / before.norm() < 0.01


def test_comfy_models_and_unknown_formats_are_refused(tiny_backbone):
    with pytest.raises(ConfigError, match="model.base_precision 'fp4'"):
        quantize_base(tiny_backbone, "fp4")
    tiny_backbone.kind = "comfy"
    with pytest.raises(ConfigError, match="ComfyUI MODEL is shared"):
        quantize_base(tiny_backbone, "fp8")
