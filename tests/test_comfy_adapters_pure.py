"""The ComfyUI adapters without ComfyUI (the import boundary: tests/test_boundary.py): inference-mode helpers, the tiny ComfyUI-layout shapes."""

from collections import namedtuple

import torch

from lumina2_train.backbones.inference import clone_inference_tensors, training_mode


def test_training_mode_leaves_inference_mode_and_enables_grad():
    with torch.inference_mode():
        with training_mode():
            assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
            t = torch.ones(2, requires_grad=True)
            (t * 2).sum().backward()
        assert torch.is_inference_mode_enabled()
    assert torch.equal(t.grad, torch.full((2,), 2.0))


def test_clone_inference_tensors_walks_containers():
    Pair = namedtuple("Pair", "a b")
    with torch.inference_mode():
        inf = torch.arange(3.0)
    normal = torch.zeros(2)
    out = clone_inference_tensors({"x": [inf, (normal, Pair(inf, 5))], "s": "text"})
    assert not out["x"][0].is_inference() and torch.equal(out["x"][0], inf)
    assert out["x"][1][0] is normal  # normal tensors are not copied
    assert isinstance(out["x"][1][1], Pair) and not out["x"][1][1].a.is_inference() and out["x"][1][1].b == 5
    assert out["s"] == "text"
    w = torch.ones(3, requires_grad=True)
    (out["x"][0] * w).sum().backward()  # usable by autograd, unlike the inference tensor
    assert torch.equal(w.grad, inf)


def test_tiny_comfy_text_encoder_is_a_real_gemma2_layout():
    from transformers import Gemma2Config, Gemma2Model

    from lumina2_train.tiny.comfy_layout import COMFY_GEMMA2_HEAD_DIM, COMFY_TINY_GEMMA2, comfy_tiny_text_state_dict

    sd = comfy_tiny_text_state_dict(seed=0)
    assert sd["spiece_model"].dtype == torch.uint8 and sd["spiece_model"].numel() > 1000
    model = Gemma2Model(Gemma2Config(**COMFY_TINY_GEMMA2, head_dim=COMFY_GEMMA2_HEAD_DIM))
    weights = {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=True)
    assert not missing and not unexpected
    assert "model.layers.0.post_feedforward_layernorm.weight" in sd  # ComfyUI's Gemma2-2B detection key


def _inference_linear(moved: bool) -> torch.nn.Linear:
    """A Linear made under inference mode (as ComfyUI loads models), optionally then converted outside it."""
    with torch.inference_mode():
        lin = torch.nn.Linear(4, 3)
    return lin.to(torch.float64) if moved else lin  # Module.to outside inference mode: a half-inference tensor


def test_half_converted_inference_weights_are_detected_and_copied():
    from lumina2_train.backbones.comfy import ComfyLinears, comfy_weight, needs_weight_copies
    from lumina2_train.backbones.inference import is_autograd_safe

    for moved in (False, True):
        lin = _inference_linear(moved)
        assert not is_autograd_safe(lin.weight) and lin.weight.is_inference() != moved
        assert is_autograd_safe(clone_inference_tensors(lin.weight))
        x = torch.randn(2, 4, dtype=lin.weight.dtype, requires_grad=True)
        assert needs_weight_copies(lin)  # decided once per forward, outside any compiled block
        linears = ComfyLinears({}, comfy_weight, copy_weights=needs_weight_copies(lin))
        linears.apply(lin, None, x).sum().backward()  # autograd saves the copies, not ComfyUI's tensors
        weight, bias = linears._base(lin, x)
        assert torch.equal(weight, lin.weight) and weight is not lin.weight and x.grad is not None
        with torch.no_grad():  # no copy when autograd will not save anything
            assert not needs_weight_copies(lin)
            assert comfy_weight(lin, x.dtype, x.device)[0] is lin.weight
    assert not needs_weight_copies(torch.nn.Linear(4, 3))  # ordinary weights are used as they are
