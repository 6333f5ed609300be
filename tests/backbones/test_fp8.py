"""fp8 compute of the frozen base and fp8 storage of saved activations (backbones/fp8.py), on the CPU through
the emulation: the same quantisation and scales as the GPU path, dequantised and multiplied in fp32."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones import fp8
from lumina2_train.backbones.nextdit import compile_block
from lumina2_train.backbones.quant import quantize_base
from lumina2_train.config import AdapterConfig, ModelConfig, RunConfig, TrainConfig
from lumina2_train.errors import ConfigError


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_row_scales_are_powers_of_two_and_bound_the_rounding():
    x = torch.randn(64, 96) * torch.logspace(-4, 2, 64)[:, None]
    x[3] = 0.0
    q, s = fp8.quantize_rows(x)
    assert q.dtype == fp8.FP8 and s.shape == (64, 1)
    assert torch.equal(torch.log2(s), torch.log2(s).round())  # exact scaling: only e4m3 rounding remains
    assert (q.float().abs().amax(1) <= fp8.FP8_MAX).all() and (x.abs().amax(1)[4:] / s[4:, 0] > 224).all()
    assert torch.equal(q[3].float(), torch.zeros(96)) and s[3] == 1
    assert ((q.float() * s - x).abs() <= x.abs() / 16 + s * 2**-9).all()  # e4m3: 3 mantissa bits


def _fp8_ref(x, w, gy):
    """The maths spelled out: forward Q(x)·Q(W)ᵀ, backward Q(dY·s_W)·Q(W), all dequantised in fp32."""
    xq, xs = fp8.quantize_rows(x)
    wq, ws = fp8.quantize_rows(w)
    y = (xq.float() * xs) @ (wq.float() * ws).t()
    gq, gs = fp8.quantize_rows(gy.float() * ws.t())
    return y, (gq.float() * gs) @ wq.float()


def test_emulated_linear_is_the_quantised_maths_and_close_to_exact():
    x = torch.randn(2, 40, 64, requires_grad=True)
    w, gy = torch.randn(48, 64) * 0.05, torch.randn(2, 40, 48)
    y = fp8.fp8_linear(x, w, None, None, emulate=True)
    y.backward(gy)
    ref_y, ref_gx = _fp8_ref(x.detach().reshape(-1, 64), w, gy.reshape(-1, 48))
    torch.testing.assert_close(y.reshape(-1, 48), ref_y.bfloat16().float())
    torch.testing.assert_close(x.grad.reshape(-1, 64), ref_gx.bfloat16().float())
    exact = x.detach() @ w.t()
    assert _rel(y.detach(), exact) < 0.08 and _rel(x.grad, gy @ w) < 0.08


def test_fp8_stored_base_is_used_as_stored(tiny_backbone):
    """With quant.py's fp8 storage the GEMMs read the stored e4m3 weights and their row scales: the dense
    weight_fn (which would make a dequantised copy) is never called for a block's token Linears."""
    quantize_base(tiny_backbone, "fp8")
    module = tiny_backbone.linear("layers.0.feed_forward.w1")
    called = []
    dequant = tiny_backbone.weight_fn
    tiny_backbone.weight_fn = lambda m, d, dev: (called.append(m), dequant(m, d, dev))[1]
    tiny_backbone.options.base_compute = "fp8_emulated"
    x, s, f = torch.randn(2, 16, 8, 8), torch.rand(2), torch.randn(2, 5, 32)
    tiny_backbone.velocity(x, s, f, None).square().mean()
    assert called and module not in called  # embedders / adaLN go through weight_fn, w1 does not
    h = torch.randn(3, 96, requires_grad=True)
    y = fp8.fp8_linear(h, module.weight, None, module.weight_scale, emulate=True)
    xq, xs = fp8.quantize_rows(h.detach())
    ref = (xq.float() * xs) @ (module.weight.float() * module.weight_scale).t()
    torch.testing.assert_close(y.detach(), ref.bfloat16().float())


def test_backbone_fp8_trains_close_to_exact_and_never_changes_no_grad_forwards(tiny_backbone):
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, targets=("attention", "ffn")), seed=0).as_dict()
    for a in adapters.values():
        for p in a.parameters():
            torch.nn.init.normal_(p, std=0.05)
    x, s, f = torch.randn(2, 16, 8, 8), torch.rand(2), torch.randn(2, 5, 32)

    def run(compute):
        tiny_backbone.options.base_compute = compute
        for a in adapters.values():
            a.zero_grad()
        out = tiny_backbone.velocity(x, s, f, None, adapters)
        out.square().mean().backward()
        with torch.no_grad():
            plain = tiny_backbone.velocity(x, s, f, None, adapters)
        return out.detach(), torch.cat([p.grad.flatten() for a in adapters.values() for p in a.parameters()]), plain

    out, grad, plain = run("bf16")
    out8, grad8, plain8 = run("fp8_emulated")
    assert 0 < _rel(out8, out) < 0.1 and _rel(grad8, grad) < 0.25
    torch.testing.assert_close(plain8, plain)  # validation and sampling stay exact


def _grads(backbone, adapters, x, s, f):
    for a in adapters.values():
        a.zero_grad()
    out = backbone.velocity(x, s, f, None, adapters)
    out.float().square().mean().backward()
    return out.detach(), torch.cat([p.grad.flatten() for a in adapters.values() for p in a.parameters()])


@pytest.mark.slow
def test_compiled_blocks_trace_the_fp8_path_with_eager_results(tiny_backbone):
    """aot_eager: the fp8 autograd function adds no graph and computes exactly what eager computes."""
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4), seed=0).as_dict()
    tiny_backbone.options.base_compute = "fp8_emulated"
    x, s, f = torch.randn(2, 16, 8, 8), torch.rand(2), torch.randn(2, 5, 32)
    ref, ref_g = _grads(tiny_backbone, adapters, x, s, f)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    tiny_backbone.options.compiled_block = compile_block("aot_eager")
    for _ in range(2):
        out, g = _grads(tiny_backbone, adapters, x, s, f)
    assert counters["stats"]["unique_graphs"] - before == 3  # context refiner, noise refiner, main layers
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, ref_g)
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_blocks_pack_what_they_save(tiny_backbone, monkeypatch):
    """The saved-tensor hooks reach what a compiled block saves (at run time, no extra graph); the gradients
    stay within fp8 rounding of the unpacked ones."""
    monkeypatch.setattr(fp8, "MIN_PACKED", 1)
    tiny_backbone.tree.to(torch.bfloat16)
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4), seed=0).as_dict()
    for a in adapters.values():
        torch.nn.init.normal_(a.up, std=0.05)
    x, s, f = (torch.randn(2, 16, 8, 8, dtype=torch.bfloat16), torch.rand(2),
               torch.randn(2, 5, 32, dtype=torch.bfloat16))
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    tiny_backbone.options.compiled_block = compile_block("aot_eager")
    _, ref_g = _grads(tiny_backbone, adapters, x, s, f)
    packer = fp8.packed_activations(tiny_backbone.tree)
    packed = []
    pack = packer.pack
    monkeypatch.setattr(packer, "pack", lambda t: (packed.append(t.shape), pack(t))[1])
    tiny_backbone.options.packer = packer
    _, g = _grads(tiny_backbone, adapters, x, s, f)
    assert counters["stats"]["unique_graphs"] - before == 3 and packed
    assert 0 < _rel(g.float(), ref_g.float()) < 0.1
    torch._dynamo.reset()


def test_packed_activations_store_fp8_and_restore_shape_and_strides(tiny_backbone, monkeypatch):
    monkeypatch.setattr(fp8, "MIN_PACKED", 64)
    packer = fp8.packed_activations(tiny_backbone.tree)
    t = torch.randn(2, 8, 6, 16, dtype=torch.bfloat16).transpose(1, 2)  # dense, not contiguous
    stored, scale = packer.pack(t)
    assert stored.dtype == fp8.FP8 and stored.stride() == t.stride()
    back = packer.unpack((stored, scale))
    assert back.dtype == torch.bfloat16 and back.stride() == t.stride() and _rel(back.float(), t.float()) < 0.05
    tiny_backbone.tree.to(torch.bfloat16)
    packer = fp8.packed_activations(tiny_backbone.tree)
    weight = tiny_backbone.linear("layers.0.feed_forward.w1").weight
    kept = [weight.detach().view(1, *weight.shape),  # shares a frozen weight's memory
            torch.randn(2, 8, 6, 16, dtype=torch.bfloat16)[:, :4],  # a slice of a larger buffer frees nothing
            torch.randn(4, 16, dtype=torch.bfloat16),  # 2-D: weights and their copies
            torch.randn(2, 2, 8, dtype=torch.bfloat16),  # small
            torch.randn(2, 8, 16)]  # fp32 (attention statistics)
    assert all(packer.pack(x) is x for x in kept)
    assert isinstance(packer.pack(weight.detach().clone().view(1, *weight.shape)), tuple)


def test_kept_blocks_pack_and_recomputed_blocks_do_not(tiny_backbone, monkeypatch):
    monkeypatch.setattr(fp8, "MIN_PACKED", 1)
    tiny_backbone.tree.to(torch.bfloat16)
    packer = fp8.packed_activations(tiny_backbone.tree)
    packed = []
    pack = packer.pack
    monkeypatch.setattr(packer, "pack", lambda t: (packed.append(t.shape), pack(t))[1])
    opts = tiny_backbone.options
    opts.packer, opts.checkpoint = packer, True
    x, s, f = (torch.randn(2, 16, 8, 8, dtype=torch.bfloat16), torch.rand(2),
               torch.randn(2, 5, 32, dtype=torch.bfloat16))
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4), seed=0).as_dict()
    tiny_backbone.velocity(x, s, f, None, adapters).float().square().mean().backward()
    assert packed == []  # every block recomputed: nothing kept, nothing packed
    opts.keep_activations[(2, 5 + 16)] = 1
    tiny_backbone.velocity(x, s, f, None, adapters).float().square().mean().backward()
    assert packed


def test_fp8_is_refused_where_it_cannot_run_and_validated_in_the_config():
    with pytest.raises(ConfigError, match=r"model.base_compute 'fp8': .*\(the model is on cpu\).*'bf16'"):
        fp8.check_compute("fp8", torch.device("cpu"))
    assert fp8.check_compute("fp8_emulated", torch.device("cpu")) is True
    assert fp8.check_compute("bf16", torch.device("cpu")) is False
    errors = RunConfig(model=ModelConfig(base_compute="fp4"),
                       train=TrainConfig(precision="fp32", saved_activations="int4")).errors()
    assert any(e.startswith("model.base_compute 'fp4' is unknown") for e in errors)
    assert any(e.startswith("train.saved_activations 'int4' is unknown") for e in errors)
    errors = RunConfig(model=ModelConfig(base_compute="fp8"),
                       train=TrainConfig(precision="fp32", saved_activations="fp8", checkpointing="on")).errors()
    assert any("model.base_compute 'fp8'" in e and "train.precision" in e for e in errors)
    assert any("train.saved_activations 'fp8'" in e and "checkpointing 'on'" in e for e in errors)
    RunConfig(model=ModelConfig(base_compute="fp8"), train=TrainConfig(saved_activations="fp8", checkpointing="auto")
              ).validate(need_data=False)


@pytest.mark.slow
def test_the_compiled_pack_equals_the_eager_one_and_keeps_the_strides():
    """CUDA packs with the compiled pair (one fused kernel each way); compiled here on the CPU, it must give
    the eager pair's fp8 values, scales and strides, for contiguous and transposed (dense) saved tensors."""
    torch.manual_seed(0)
    base = torch.randn(2, 40, 4, 24, dtype=torch.bfloat16) * 3
    for t in (base, base.transpose(1, 2)):  # (B, N, H, d) and the (B, H, N, d) view attention saves
        stored, scale = fp8._compiled("pack")(t)
        ref_stored, ref_scale = fp8._pack_rows(t)
        assert stored.stride() == t.stride() and stored.dtype == fp8.FP8
        assert torch.equal(stored.float(), ref_stored.float()) and torch.equal(scale, ref_scale)
        back = fp8._compiled("unpack")(stored, scale)
        assert back.stride() == t.stride() and torch.equal(back, fp8._unpack_rows(ref_stored, ref_scale))


def test_a_pack_that_cannot_compile_falls_back_to_the_eager_pair(monkeypatch, caplog):
    def broken(*_a):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fp8, "_COMPILED", {"pack": broken})
    t = torch.randn(2, 8, 16, dtype=torch.bfloat16)
    stored, scale = fp8._run_compiled("pack", t)
    ref = fp8._pack_rows(t)
    assert torch.equal(stored.float(), ref[0].float()) and torch.equal(scale, ref[1])
    assert fp8._COMPILED["pack"] is fp8._pack_rows and "packing eagerly" in caplog.text
