"""The NextDiT forward (Lumina-Image-2.0 and Z-Image), written once over any module tree that uses the
native names (ComfyUI's `NextDiT`, or `NativeNextDiT` of arch.py built from diffusers weights).

Native names (official code, ComfyUI, kohya): `layers.N.attention.qkv|out`, `layers.N.feed_forward.w1|w2|w3`,
`layers.N.adaLN_modulation.1` (Z-Image: `.0`, arch.block_linears), the same under `noise_refiner.N` / `context_refiner.N` (no adaLN there),
`final_layer.linear`, `final_layer.adaLN_modulation.1`, `x_embedder`, `t_embedder.mlp.0|2`, `cap_embedder.1`.

The forward never writes the tree's parameters and never adds modules or hooks to it: adapters are
looked up by native name in a separate `AdapterSet` and added to each Linear's output. That is how the
shared ComfyUI model stays untouched while a LoRA trains on it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from . import fp8, selective
from .arch import ArchConfig  # noqa: F401  (re-exported: one import path for callers)
from .attention import apply_rope, cuda_attention, rope_angles
from .sequence import lumina2_positions, zimage_sequence
from .tree import (  # noqa: F401  (re-exported)
    BLOCK_LINEARS,
    ZIMAGE_BLOCK_LINEARS,
    NativeNextDiT,
    block_linears,
    linear_names,
)

_QKV, _OUT, _W1, _W2, _W3, _ADALN = range(len(BLOCK_LINEARS))


class Linears:
    """Applies the tree's Linear layers plus any adapter registered under the same native name.

    `weight_fn(module, dtype, device)` returns (weight, bias) ready for F.linear; ComfyUI's backbone passes
    one that goes through comfy.ops' casting (fp8 storage, offloaded weights), backbones/quant.py one that
    dequantises an fp8/int8 base. `compute` 'fp8' / 'fp8_emulated' (model.base_compute) runs the frozen base
    GEMMs of the blocks' token Linears (qkv, out, w1, w2, w3) in fp8 while grad is on (backbones/fp8.py);
    adapters, adaLN, embedders and every no-grad forward (validation, sampling) stay in the exact dtype.
    """

    def __init__(self, adapters: dict[str, nn.Module] | None = None, weight_fn=None, frozen: bool = True,
                 compute: str = "bf16"):
        self.adapters = adapters or {}
        self.weight_fn = weight_fn or _plain_weight
        self.frozen = frozen  # base weights are detached: no gradient ever reaches (or is stored on) them
        self.fp8_base = compute != "bf16" and frozen and torch.is_grad_enabled()
        self.emulate = compute == "fp8_emulated"

    def norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = norm.weight
        if w is not None:
            w = (w.detach() if self.frozen else w).to(device=x.device, dtype=x.dtype)
        return F.rms_norm(x, (x.shape[-1],), w, norm.eps)

    def block(self, prefix: str, names: tuple[str, ...] = BLOCK_LINEARS) -> tuple:
        """The adapters (or None) of block `prefix`'s Linears, in `names` order (block_linears(arch)).

        The block function receives these instead of names, so one compiled block serves every layer.
        """
        return tuple(self.adapters.get(f"{prefix}.{n}") for n in names)

    def apply(self, module: nn.Module, adapter: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        if adapter is not None and getattr(adapter, "replaces_weight", False):
            if getattr(adapter, "needs_base_weight", False):  # DoRA: rescales the (dequantised) base weight
                weight, bias = self._base(module, x)
                return F.linear(x, adapter.adapted_weight(weight), bias)
            weight, bias = adapter.weight_and_bias(module, x)  # full fine-tune: its own copy of the weight
            return F.linear(x, weight, bias)
        weight, bias = self._base(module, x)
        y = F.linear(x, weight, bias)
        return y if adapter is None else y + adapter(x)

    def tokens(self, module: nn.Module, adapter: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        """`apply` for a block's token Linears: the frozen base GEMMs in fp8 when `compute` asks for it."""
        if not self.fp8_base or (adapter is not None and getattr(adapter, "replaces_weight", False)):
            return self.apply(module, adapter, x)
        return fp8.token_linear(self, module, adapter, x)

    def _base(self, module: nn.Module, x: torch.Tensor):
        weight, bias = self.weight_fn(module, x.dtype, x.device)
        if self.frozen:
            weight, bias = weight.detach(), (bias.detach() if bias is not None else None)
        return weight, bias

    def __call__(self, name: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.apply(module, self.adapters.get(name), x)


def _plain_weight(module: nn.Module, dtype: torch.dtype, device: torch.device):
    w = module.weight.to(device=device, dtype=dtype)
    b = module.bias.to(device=device, dtype=dtype) if module.bias is not None else None
    return w, b


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of Lumina's own time t ∈ [0, 1] ([cos, sin], no ×1000), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _attention(blk, ad: tuple, lin: Linears, x, key_mask, cos, sin, arch: ArchConfig, cudnn: bool):
    b, n, _ = x.shape
    q, k, v = lin.tokens(blk.attention.qkv, ad[_QKV], x).split(arch.qkv_split, dim=-1)
    q = lin.norm(blk.attention.q_norm, q.view(b, n, arch.n_heads, arch.head_dim))
    k = lin.norm(blk.attention.k_norm, k.view(b, n, arch.n_kv_heads, arch.head_dim))
    v = v.view(b, n, arch.n_kv_heads, arch.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = arch.n_heads != arch.n_kv_heads
    if not x.is_cuda:
        mask = None if key_mask is None else key_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    else:
        if gqa:  # the fused kernels below take equal head counts (and masked GQA has none): expand k/v
            rep = arch.n_heads // arch.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = cuda_attention(q, k, v, key_mask, cudnn)
    return lin.tokens(blk.attention.out, ad[_OUT], o.transpose(1, 2).reshape(b, n, -1))


def _ffn(blk, ad: tuple, lin: Linears, x):
    ff = blk.feed_forward
    h = F.silu(lin.tokens(ff.w1, ad[_W1], x)) * lin.tokens(ff.w3, ad[_W3], x)
    return lin.tokens(ff.w2, ad[_W2], h)


def block_forward(blk, ad: tuple, lin: Linears, arch: ArchConfig, x, key_mask, cos, sin, temb,
                  cudnn: bool = False):
    """One JointTransformerBlock (sandwich norms; adaLN modulation when temb is given).

    `ad` holds the block's adapters (Linears.block); nothing here depends on the block's name, so a compiled
    version is traced once per block kind and shape and reused by every layer. `cudnn`: prefer cuDNN's
    attention kernel (CUDA inputs without a padding mask).
    """
    if temb is None:
        x = x + lin.norm(blk.attention_norm2, _attention(blk, ad, lin, lin.norm(blk.attention_norm1, x),
                                                         key_mask, cos, sin, arch, cudnn))
        return x + lin.norm(blk.ffn_norm2, _ffn(blk, ad, lin, lin.norm(blk.ffn_norm1, x)))
    if arch.is_zimage:  # z_image_modulation: the time embedding enters the Linear without a SiLU
        mod = lin.apply(blk.adaLN_modulation[0], ad[_ADALN], temb)
    else:
        mod = lin.apply(blk.adaLN_modulation[1], ad[_ADALN], F.silu(temb))
    scale_msa, gate_msa, scale_mlp, gate_mlp = mod.unsqueeze(1).chunk(4, dim=-1)
    a = _attention(blk, ad, lin, lin.norm(blk.attention_norm1, x) * (1 + scale_msa), key_mask, cos, sin, arch,
                   cudnn)
    x = x + gate_msa.tanh() * lin.norm(blk.attention_norm2, a)
    f = _ffn(blk, ad, lin, lin.norm(blk.ffn_norm1, x) * (1 + scale_mlp))
    return x + gate_mlp.tanh() * lin.norm(blk.ffn_norm2, f)


def compile_block(backend: str = "inductor"):
    """`block_forward` under torch.compile (regional compilation: one graph per block kind and bucket shape).

    Static shapes (dynamic=False): each bucket gets its own specialised kernels; recompiles stay bounded by
    (block kinds: context refiner, noise refiner, main) × (bucket shapes) × (grad mode).
    """
    return torch.compile(block_forward, backend=backend, dynamic=False)


@dataclass
class ForwardOptions:
    """How the forward runs (never what it computes)."""

    checkpoint: bool = False  # activation checkpointing (recompute in backward) of the transformer blocks
    # per (batch, joint tokens): how many blocks, counted from the last main layer backwards, keep their
    # activations instead (chosen from a memory budget by train/memory.py); unknown shapes keep none
    keep_activations: dict[tuple[int, int], int] = field(default_factory=dict)
    # per (batch, joint tokens): how many of the recomputed blocks before those recompute selectively
    # (backbones/selective.py: their qkv GEMM and attention outputs are kept); unknown shapes: none
    selective_blocks: dict[tuple[int, int], int] = field(default_factory=dict)
    compiled_block: Callable | None = None  # compile_block(), set by the trainer when train.compile is on
    compiled_selective: Callable | None = None  # selective.compile_selective(block_forward), with compiled_block
    cudnn_attention: bool = True  # on CUDA, prefer cuDNN's attention kernel (PyTorch's order otherwise)
    # a recomputed block replays the RNG state of its first run; only needed when adapters draw (dropout)
    recompute_rng: bool = True
    # block prefix -> module whose forward runs that block (FSDP2 units of a sharded full fine-tune,
    # train/parallel.py): called as unit(run_block, *args) so its hooks gather the block's weights first
    units: dict[str, nn.Module] = field(default_factory=dict)
    # model.base_compute: 'bf16' (exact), 'fp8' or 'fp8_emulated' for the blocks' frozen token Linears (Linears)
    base_compute: str = "bf16"
    # train.saved_activations 'fp8': a fp8.PackedActivations whose hooks store what blocks that keep their
    # activations save for backward (None: as autograd saves it)
    packer: object | None = None

    def kept(self, batch: int, tokens: int) -> int:
        return self.keep_activations.get((batch, tokens), 0) if self.checkpoint else 0

    def selective(self, batch: int, tokens: int) -> int:
        return self.selective_blocks.get((batch, tokens), 0) if self.checkpoint else 0


@dataclass
class _Tokens:
    """The embedded sequences the blocks run on (one family's padding and positions applied)."""

    cap: torch.Tensor  # (B, Lc, D)
    cap_mask: torch.Tensor | None  # (B, Lc) bool key mask, None when nothing is masked
    img: torch.Tensor  # (B, Ni, D); the first h·w are the image's patches
    pos: torch.Tensor  # (B, Lc + Ni, 3) rope positions


def _tokens(tree, arch: ArchConfig, lin: Linears, x_sigma, cap_feats, cap_mask) -> _Tokens:
    b, c, hh, ww = x_sigma.shape
    p = arch.patch_size
    h, w = hh // p, ww // p
    cap = lin("cap_embedder.1", tree.cap_embedder[1], lin.norm(tree.cap_embedder[0], cap_feats.to(x_sigma.dtype)))
    L = cap.shape[1]
    if cap_mask is not None and bool(cap_mask.all()):
        cap_mask = None
    cap_len = torch.full((b,), L, device=x_sigma.device) if cap_mask is None else cap_mask.long().sum(1)
    img = x_sigma.view(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, p * p * c)
    img = lin("x_embedder", tree.x_embedder, img)
    if arch.pad_tokens_multiple is not None:
        seq = zimage_sequence(tree, arch.pad_tokens_multiple, cap, cap_len, img, h, w)
        return _Tokens(seq.cap, seq.cap_mask, seq.img, torch.cat([seq.cap_pos, seq.img_pos], dim=1))
    cap_pos, img_pos = lumina2_positions(cap_len, L, h, w, x_sigma.device)
    key_mask = None if cap_mask is None else cap_mask.bool()
    return _Tokens(cap, key_mask, img, torch.cat([cap_pos, img_pos], dim=1))


def velocity(tree: nn.Module, arch: ArchConfig, x_sigma: torch.Tensor, sigma: torch.Tensor,
             cap_feats: torch.Tensor, cap_mask: torch.Tensor | None, lin: Linears,
             opts: ForwardOptions | None = None) -> torch.Tensor:
    """ε − x predicted by the NextDiT `tree` for latents at noise level σ (library convention).

    Args:
        x_sigma: (B, 16, h, w) noisy latents in the scaled space; h, w multiples of the patch size.
        sigma: (B,) noise levels in [0, 1].
        cap_feats: (B, L, cap_feat_dim) text-encoder features, captions left-aligned.
        cap_mask: (B, L) 1 = token, 0 = padding; None when every caption fills L.
    Returns:
        (B, 16, h, w) velocity in x_sigma's dtype.
    """
    opts = opts or ForwardOptions()
    b, c, hh, ww = x_sigma.shape
    p = arch.patch_size
    h, w = hh // p, ww // p
    dtype = x_sigma.dtype
    t = (1.0 - sigma.float()) * arch.time_scale  # the network's own time: 0 noise, time_scale data
    temb = lin("t_embedder.mlp.2", tree.t_embedder.mlp[2],
               F.silu(lin("t_embedder.mlp.0", tree.t_embedder.mlp[0], timestep_features(t).to(dtype))))
    tok = _tokens(tree, arch, lin, x_sigma, cap_feats, cap_mask)
    L, key_mask = tok.cap.shape[1], tok.cap_mask
    angles = rope_angles(tok.pos, arch).unsqueeze(2)
    cos, sin = angles.cos(), angles.sin()
    cos_c, sin_c, cos_i, sin_i = cos[:, :L], sin[:, :L], cos[:, L:], sin[:, L:]

    n_blocks = len(tree.context_refiner) + len(tree.noise_refiner) + len(tree.layers)
    tokens = L + tok.img.shape[1]
    n_recomputed = n_blocks - opts.kept(b, tokens)
    run = _runner(opts, lin, arch, max(0, n_recomputed - opts.selective(b, tokens)), n_recomputed)
    cap, img, order = tok.cap, tok.img, 0
    for i, blk in enumerate(tree.context_refiner):
        cap = run(blk, f"context_refiner.{i}", cap, key_mask, cos_c, sin_c, None, order)
        order += 1
    for i, blk in enumerate(tree.noise_refiner):
        img = run(blk, f"noise_refiner.{i}", img, None, cos_i, sin_i, temb, order)
        order += 1

    hidden = torch.cat([cap, img], dim=1)
    joint_mask = None if key_mask is None else torch.cat([key_mask, key_mask.new_ones(b, img.shape[1])], dim=1)
    for i, blk in enumerate(tree.layers):
        hidden = run(blk, f"layers.{i}", hidden, joint_mask, cos, sin, temb, order)
        order += 1

    fl = tree.final_layer
    scale = lin("final_layer.adaLN_modulation.1", fl.adaLN_modulation[1], F.silu(temb))
    out = F.layer_norm(hidden[:, L:L + h * w], (arch.dim,), eps=1e-6) * (1 + scale.unsqueeze(1))
    out = lin("final_layer.linear", fl.linear, out)
    out = out.view(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hh, ww)
    return -out  # the network predicts x − ε (official convention); the library's velocity is ε − x


def _runner(opts: ForwardOptions, lin: Linears, arch: ArchConfig, n_full: int, n_checkpointed: int):
    """run(block, prefix, x, ...) for the block at position `order`: the first `n_full` recompute whole, the
    next up to `n_checkpointed` recompute selectively (backbones/selective.py), the rest keep activations."""
    grad = torch.is_grad_enabled()
    names = block_linears(arch)
    compiled = opts.compiled_block is not None and grad
    fn = opts.compiled_block if compiled else block_forward

    def run(blk, prefix, x, mask, cos, sin, temb, order):
        ad = lin.block(prefix, names)
        cudnn = opts.cudnn_attention and x.is_cuda
        mode = _KEEP
        if opts.checkpoint and grad and order < n_checkpointed:
            mode = _FULL if order < n_full else _SELECTIVE
        rng = mode != _KEEP and opts.recompute_rng
        block_fn = fn
        if mode == _SELECTIVE:
            block_fn = opts.compiled_selective if (compiled and opts.compiled_selective is not None) else \
                functools.partial(selective.selective_block, block_forward)
        unit = opts.units.get(prefix)
        packer = opts.packer if (grad and mode != _FULL) else None
        if unit is not None:  # through the unit's __call__: FSDP2 unshards before and reshards after
            return unit(_run_block, block_fn, mode, rng, blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn, packer)
        return _run_block(block_fn, mode, rng, blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn, packer)

    return run


_KEEP, _SELECTIVE, _FULL = "keep", "selective", "full"


def _run_block(fn, mode: str, rng: bool, blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn, packer=None):
    if mode == _FULL:  # no RNG replay or recompute check unless needed: both cost host time on every block
        return _checkpoint(fn, blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn, use_reentrant=False,
                           preserve_rng_state=rng, determinism_check="default" if rng else "none")
    args = (rng, blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn) if mode == _SELECTIVE else \
        (blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn)
    if packer is not None:  # what the block saves for backward is stored in fp8 (fp8.PackedActivations)
        with packer.hooks():
            return fn(*args)
    return fn(*args)
