"""fp8 compute for the frozen base (`model.base_compute = "fp8"`) and fp8 storage of saved activations
(`train.saved_activations = "fp8"`). Both are opt-in: they change the numbers, not only the speed.

fp8 compute: each transformer-block Linear of the frozen base runs its forward GEMM and its input-gradient
GEMM in float8 e4m3 through `torch._scaled_mm` (Hopper / Ada tensor cores), with one power-of-two scale per
row: per token row of the activation (forward) or of the output gradient (backward), per output row of the
weight. There is no weight-gradient GEMM (the base is frozen), so nothing else is left in bf16 except the
adapters, norms, attention and the loss. Weights stored in fp8 by backbones/quant.py are used as they are
(their per-row scales are the same layout), so no second copy of the weights exists; bf16 weights (or a
ComfyUI MODEL's, through its casting) are quantised per call, transiently. The backward saves only the weight
reference, never an activation, so a kept block holds less.

`emulate=True` runs the same maths on any device: the same quantisation (same scales, same fp8 values),
dequantised and multiplied in fp32 (`model.base_compute = "fp8_emulated"`; tests, and checking numerics on a
machine without fp8 tensor cores). It matches the GPU path up to fp32 accumulation order.

Saved activations in fp8: inside blocks that keep their activations (train/memory.py), every large bf16
tensor autograd saves is stored as fp8 e4m3 with a power-of-two scale per last-dimension row and turned back
into bf16 (same shape and strides) when the backward needs it. Half the bytes per kept block, so
`checkpointing = "auto"` keeps more blocks under the same budget. No ComfyUI imports.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ConfigError

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
COMPUTES = ("bf16", "fp8", "fp8_emulated")
MIN_PACKED = 1 << 20  # elements: smaller saved tensors stay as they are (norm statistics, LoRA products, ...)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with x ≈ q.float() * scale: e4m3 values, one power-of-two fp32 scale per last-dim row.

    Power-of-two scales make the scaling exact (only the e4m3 rounding remains), as torchao's row-wise
    recipe does; an all-zero row gets scale 1.
    """
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX)))
    scale = torch.where(amax > 0, scale, torch.ones_like(scale))
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _scaled_mm(a: torch.Tensor, a_scale: torch.Tensor, b_t: torch.Tensor, b_scale: torch.Tensor,
               emulate: bool) -> torch.Tensor:
    """(a * a_scale) @ (b_t * b_scale) in bf16: a (M, K) e4m3 row-major, b_t (K, N) e4m3 column-major,
    a_scale (M, 1), b_scale (1, N) fp32."""
    if emulate:
        return ((a.float() * a_scale) @ (b_t.float() * b_scale)).to(torch.bfloat16)
    return torch._scaled_mm(a, b_t, scale_a=a_scale, scale_b=b_scale, out_dtype=torch.bfloat16)


def _weight_rows(weight: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) e4m3 weight and its (N, 1) scale: stored ones as they are, others quantised now."""
    if weight.dtype == FP8 and scale is not None:
        return weight, scale.float()
    return quantize_rows(weight)


class _Fp8Linear(torch.autograd.Function):
    """y = x Wᵀ with both GEMMs in fp8; W frozen (no weight gradient), x gets its gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, emulate: bool):
        w_q, w_s = _weight_rows(weight, scale)
        x2 = x.reshape(-1, x.shape[-1])
        x_q, x_s = quantize_rows(x2)
        y = _scaled_mm(x_q, x_s, w_q.t(), w_s.t(), emulate)
        ctx.save_for_backward(weight, scale if scale is not None else weight.new_empty(0))
        ctx.emulate, ctx.stored, ctx.in_dtype = emulate, scale is not None, x.dtype
        return y.view(*x.shape[:-1], y.shape[-1]).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, scale = ctx.saved_tensors
        w_q, w_s = _weight_rows(weight, scale if ctx.stored else None)
        g2 = grad.reshape(-1, grad.shape[-1])
        # dX = dY W = (dY · w_s) W_q: the weight's row scales fold into the gradient's columns first
        g_q, g_s = quantize_rows(g2.float() * w_s.t())
        w_col = w_q.t().contiguous().t()  # (N, K) column-major: transient, 1 byte per weight
        ones = torch.ones(1, w_q.shape[1], device=grad.device, dtype=torch.float32)
        gx = _scaled_mm(g_q, g_s, w_col, ones, ctx.emulate)
        return gx.view(*grad.shape[:-1], gx.shape[-1]).to(ctx.in_dtype), None, None, None


def fp8_shapes_ok(weight: torch.Tensor) -> bool:
    """torch._scaled_mm needs both weight dimensions to be multiples of 16 (every Lumina2 block Linear is)."""
    return weight.dim() == 2 and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None,
               emulate: bool) -> torch.Tensor:
    """F.linear(x, dequantised weight, bias) with the GEMMs in fp8 (see module doc); `weight` is detached."""
    y = _Fp8Linear.apply(x, weight, scale, emulate)
    return y if bias is None else y + bias.to(y.dtype)


def stored_weight(module: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(e4m3 weight, (N, 1) scale) of a module that backbones/quant.py stored in fp8, else None (the weight
    then comes dense through the backbone's weight_fn and is quantised per call)."""
    scale = getattr(module, "weight_scale", None)
    if scale is None or module.weight.dtype != FP8:
        return None
    return module.weight.detach().to(device), scale.to(device)


def token_linear(lin, module: nn.Module, adapter: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """nextdit.Linears.tokens with fp8 on: the frozen base in fp8 plus the adapter's output (in bf16)."""
    stored = stored_weight(module, x.device)  # quant.py's fp8 storage is used as stored: no copy
    if stored is not None:
        (weight, scale), bias = stored, None if module.bias is None else module.bias.to(x.device, x.dtype)
    else:
        (weight, bias), scale = lin._base(module, x), None
    if not fp8_shapes_ok(weight):
        return lin.apply(module, adapter, x)
    y = fp8_linear(x, weight.detach(), None if bias is None else bias.detach(), scale, lin.emulate)
    return y if adapter is None else y + adapter(x)


def fp8_capable(device: torch.device) -> str:
    """'' when `device` runs torch._scaled_mm with row-wise scales, else why not (for the refusal)."""
    if device.type != "cuda":
        return f"fp8 GEMMs need an NVIDIA GPU with fp8 tensor cores (the model is on {device.type})"
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if (major, minor) < (8, 9):
        return f"{name} (compute capability {major}.{minor}) has no fp8 tensor cores; they start at 8.9 (Ada, Hopper)"
    try:
        a = torch.ones(16, 16, device=device).to(FP8)
        s = torch.ones(16, 1, device=device)
        torch._scaled_mm(a, a.t(), scale_a=s, scale_b=s.t(), out_dtype=torch.bfloat16)
    except RuntimeError as e:
        return f"torch {torch.__version__} cannot run row-wise fp8 GEMMs on {name} ({str(e).splitlines()[0][:120]})"
    return ""


def check_compute(compute: str, device: torch.device) -> bool:
    """Whether the block Linears run in fp8 emulation (True) or on fp8 tensor cores (False), for
    `model.base_compute`; ConfigError when 'fp8' cannot run on `device`."""
    if compute == "fp8":
        why = fp8_capable(device)
        if why:
            raise ConfigError(f"model.base_compute 'fp8': {why}. Set model.base_compute to 'bf16' (exact) here")
    return compute == "fp8_emulated"


# ---------------------------------------------------------------- saved activations in fp8

class PackedActivations:
    """saved_tensors_hooks pair storing large bf16 activations as fp8 with per-row scales.

    Tensors that share storage with `keep` (the frozen weights) are never packed, nor tensors of fewer than
    MIN_PACKED elements or fewer than 3 dimensions (weights and their copies are 2-D), nor ones whose
    memory is not dense (slices of a larger buffer would free nothing).
    """

    def __init__(self, keep: set[int] | None = None):
        self.keep = keep or set()

    def pack(self, t: torch.Tensor):
        if (t.dtype != torch.bfloat16 or t.dim() < 3 or t.numel() < MIN_PACKED or not _dense(t)
                or t.untyped_storage().data_ptr() in self.keep):
            return t
        if t.is_cuda:
            return _run_compiled("pack", t)
        return _pack_rows(t)

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        stored, s = packed
        if stored.is_cuda:
            return _run_compiled("unpack", stored, s)
        return _unpack_rows(stored, s)

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def _pack_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows stored with t's own strides (the compiled backward checks them)."""
    q, s = quantize_rows(t)
    stored = torch.empty_like(t, dtype=FP8)
    stored.copy_(q)
    return stored, s


def _unpack_rows(stored: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(stored, dtype=torch.bfloat16)
    out.copy_(stored.float() * s)
    return out


_COMPILED: dict[str, object] = {}


def _compiled(which: str):
    """_pack_rows / _unpack_rows under torch.compile (CUDA): one fused kernel each way instead of the ten eager
    ones and their fp32 temporaries, which had cost more than the recomputation the packing saves. Dynamic
    shapes: every saved tensor of every block kind shares the same few graphs."""
    fn = _COMPILED.get(which)
    if fn is None:
        fn = _COMPILED[which] = torch.compile(_pack_rows if which == "pack" else _unpack_rows, dynamic=True)
    return fn


def _run_compiled(which: str, *args):
    """The compiled pair, or the eager one (logged once) where this torch cannot compile it: the same values."""
    try:
        return _compiled(which)(*args)
    except Exception as e:  # a compiler failure must not stop a run the eager pair can carry on
        eager = _pack_rows if which == "pack" else _unpack_rows
        logging.getLogger(__name__).warning("fp8 activation %s is not compiled here (%s: %s); packing eagerly",
                                            which, type(e).__name__, str(e).splitlines()[0][:160] if str(e) else "")
        _COMPILED[which] = eager
        return eager(*args)


def _dense(t: torch.Tensor) -> bool:
    """True when t's elements fill its memory exactly (contiguous up to a permutation of dimensions)."""
    if t.storage_offset() != 0 or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return False
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def packed_activations(tree: nn.Module) -> PackedActivations:
    """The packer for a backbone tree: its parameters and buffers are never packed."""
    keep = {t.untyped_storage().data_ptr() for t in (*tree.parameters(), *tree.buffers())}
    return PackedActivations(keep)


__all__ = ["COMPUTES", "FP8", "PackedActivations", "check_compute", "fp8_capable", "fp8_linear", "fp8_shapes_ok",
           "stored_weight", "token_linear", "packed_activations", "quantize_rows"]
