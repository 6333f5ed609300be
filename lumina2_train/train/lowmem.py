"""Low-memory AdamW for full fine-tunes: 8-bit moments, stochastic rounding into bf16 weights, and the
update run inside the backward pass (gradient release), so the gradient buffer never exists whole.

`train.optimizer_states = '8bit'` keeps both Adam moments in fp8 e4m3 with one fp32 scale per 256 values
(the first moment as is, the second as its square root, which halves the exponent range it needs; tensors
under 4096 values keep fp32 moments), as torchao's AdamWFp8 does: 2 bytes of state per parameter instead
of 8. `train.optimizer_in_backward` applies each parameter's update as soon as its gradient is complete
and frees that gradient; it needs `grad_accum = 1` and no gradient clipping (both need every gradient at
once). A gradient with a non-finite value leaves its parameter and moments unchanged. No ComfyUI imports.
"""

from __future__ import annotations

import logging

import torch

from ..config import TrainConfig

log = logging.getLogger(__name__)

BLOCK = 256  # values per fp8 scale
MIN_8BIT = 4096  # smaller tensors keep fp32 moments
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def uses_low_memory_adamw(cfg: TrainConfig) -> bool:
    return cfg.optimizer_states != "fp32" or cfg.optimizer_in_backward


def _quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 values, fp32 scale per block) for x of shape (blocks, BLOCK)."""
    scale = x.abs().amax(dim=1).clamp_min(1e-30) / FP8_MAX
    return (x / scale[:, None]).to(FP8), scale


def _round_to(w32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 -> dtype; bf16 rounds stochastically, so updates far below one bf16 step still add up."""
    if dtype != torch.bfloat16:
        return w32.to(dtype)
    noise = torch.randint(0, 1 << 16, w32.shape, dtype=torch.int32, device=w32.device)
    return ((w32.view(torch.int32) + noise) & -65536).view(torch.float32).to(dtype)


def _update_8bit(p, g, m_q, m_s, r_q, r_s, hp):
    """One AdamW step with fp8 moments (in place). hp = [lr, beta1, beta2, eps, weight_decay, bc1, bc2]."""
    lr, b1, b2, eps, wd, bc1, bc2 = hp.unbind()
    g = g.float().view(-1, BLOCK)
    ok = torch.isfinite(g).all()
    m_old, r_old = m_q.float() * m_s[:, None], r_q.float() * r_s[:, None]
    m = b1 * m_old + (1 - b1) * g
    r = (b2 * r_old.square() + (1 - b2) * g * g).sqrt()
    w = p.float().view(-1, BLOCK)
    w_new = w * (1 - lr * wd) - lr * (m / bc1) / (r / bc2.sqrt() + eps)
    # select before quantising (re-quantising the old values gives them back exactly)
    mq, ms = _quantize(torch.where(ok, m, m_old))
    rq, rs = _quantize(torch.where(ok, r, r_old))
    p.copy_(torch.where(ok, _round_to(w_new, p.dtype).view(p.shape), p))
    m_q.copy_(mq)
    m_s.copy_(ms)
    r_q.copy_(rq)
    r_s.copy_(rs)


def _update_fp32(p, g, m, v, hp):
    """One AdamW step with fp32 moments (in place)."""
    lr, b1, b2, eps, wd, bc1, bc2 = hp.unbind()
    g = g.float()
    ok = torch.isfinite(g).all()
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * g * g
    w_new = p.float() * (1 - lr * wd) - lr * (m_new / bc1) / ((v_new / bc2).sqrt() + eps)
    p.copy_(torch.where(ok, _round_to(w_new, p.dtype), p))
    m.copy_(torch.where(ok, m_new, m))
    v.copy_(torch.where(ok, v_new, v))


class _Kernel:
    """An update function, compiled on CUDA (one fused pass per tensor); falls back to eager if that fails."""

    def __init__(self, fn, device_type: str):
        self.eager = fn
        self.fn = torch.compile(fn, dynamic=True) if device_type == "cuda" else fn

    def __call__(self, *args):
        if self.fn is self.eager:
            return self.eager(*args)
        try:
            return self.fn(*args)
        except Exception as e:  # a compiler problem must not stop training: the eager update is the same maths
            log.warning("compiled optimizer update failed (%s); using the eager update", e)
            self.fn = self.eager
            return self.eager(*args)


class LowMemoryAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) with fp32 or 8-bit moments; `step_param` updates one parameter.

    Moments are allocated here, not at the first step, so the memory they take is there from the start.
    """

    def __init__(self, params, *, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 states: str = "8bit"):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.states = states
        self._hp: dict[tuple, torch.Tensor] = {}
        first = self.param_groups[0]["params"][0]
        self._k8 = _Kernel(_update_8bit, first.device.type)
        self._k32 = _Kernel(_update_fp32, first.device.type)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = self._new_state(p)

    def _new_state(self, p: torch.Tensor) -> dict:
        if self.states == "8bit" and p.numel() >= MIN_8BIT and p.numel() % BLOCK == 0:
            nb = p.numel() // BLOCK
            return {"step": 0, "m_q": torch.zeros(nb, BLOCK, dtype=FP8, device=p.device),
                    "m_s": torch.zeros(nb, device=p.device), "r_q": torch.zeros(nb, BLOCK, dtype=FP8, device=p.device),
                    "r_s": torch.zeros(nb, device=p.device)}
        return {"step": 0, "m": torch.zeros_like(p, dtype=torch.float32),
                "v": torch.zeros_like(p, dtype=torch.float32)}

    def _hyper(self, group: dict, step: int, device: torch.device) -> torch.Tensor:
        b1, b2 = group["betas"]
        key = (group["lr"], b1, b2, group["eps"], group["weight_decay"], step, str(device))
        if key not in self._hp:
            if len(self._hp) > 64:
                self._hp.clear()
            vals = torch.tensor([group["lr"], b1, b2, group["eps"], group["weight_decay"], 1 - b1**step,
                                 1 - b2**step], dtype=torch.float32)
            # pinned + non_blocking: no host/device synchronisation in the middle of the backward pass
            self._hp[key] = (vals.pin_memory() if device.type == "cuda" else vals).to(device, non_blocking=True)
        return self._hp[key]

    @torch.no_grad()
    def step_param(self, p: torch.Tensor, group: dict | None = None) -> None:
        """Apply p.grad to p (and its moments); p.grad is left for the caller to free."""
        group = group or next(g for g in self.param_groups if any(q is p for q in g["params"]))
        st = self.state[p]
        st["step"] += 1
        hp = self._hyper(group, st["step"], p.device)
        if "m_q" in st:
            self._k8(p, p.grad, st["m_q"], st["m_s"], st["r_q"], st["r_s"], hp)
        else:
            self._k32(p, p.grad, st["m"], st["v"], hp)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.step_param(p, group)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore moments as saved (torch's default would cast the fp8 moments to the parameter dtype)."""
        saved = state_dict["state"]
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            if i in saved:
                self.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in saved[i].items()}


class GradientRelease:
    """Runs `optimizer.step_param(p)` the moment p's gradient is accumulated, then frees the gradient."""

    def __init__(self, optimizer: LowMemoryAdamW):
        self.optimizer = optimizer
        self.enabled = True
        self._group = {p: g for g in optimizer.param_groups for p in g["params"]}
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self._group]

    def _hook(self, p: torch.Tensor) -> None:
        if self.enabled and p.grad is not None:
            self.optimizer.step_param(p, self._group[p])
            p.grad = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def build_low_memory(params, cfg: TrainConfig) -> tuple[LowMemoryAdamW, GradientRelease | None]:
    """The optimizer (and its gradient release when train.optimizer_in_backward) for `params`."""
    opt = LowMemoryAdamW([p for p in params if p.requires_grad], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                         weight_decay=cfg.weight_decay, states="8bit" if cfg.optimizer_states == "8bit" else "fp32")
    return opt, (GradientRelease(opt) if cfg.optimizer_in_backward else None)
