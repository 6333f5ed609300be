"""Training-loop settings: optimiser, schedule, timesteps, loss, EMA, speed and memory options."""

from __future__ import annotations

from dataclasses import dataclass

from .choices import (
    CHECKPOINTING,
    LOSS_WEIGHTINGS,
    NONFINITE_POLICIES,
    OPTIMIZER_STATES,
    OPTIMIZERS,
    PRECISIONS,
    SAVED_ACTIVATIONS,
    SCHEDULERS,
    SHIFT_MODES,
    TIMESTEP_SAMPLINGS,
    _choice,
    _range,
)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 1  # per micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    scheduler: str = "constant"
    warmup_steps: int = 0
    num_cycles: int = 1  # cosine_with_restarts
    power: float = 1.0  # polynomial
    min_lr_ratio: float = 0.0  # linear / cosine / polynomial decay end, as a fraction of lr
    seed: int = 42
    precision: str = "bf16"  # autocast dtype of the forward/backward (fp32 on a CPU without native bf16: train/speed.py)
    checkpointing: str = "on"
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift_mode: str = "resolution"  # resolution-dependent shift (flux/lumina auto shift), static, none
    static_shift: float = 3.0
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.0  # off by default; the official recipe trains with 0.1 (docs/recipe.md)
    use_ema: bool = False
    ema_decay: float = 0.999
    ema_every_n_steps: int = 1
    ema_on_cpu: bool = False
    on_nonfinite: str = "stop"
    # Scheduled sampling (EXPERIMENTAL): with this probability a sample's x_σ comes from the model's own
    # Euler rollout from a higher noise level instead of the exact interpolation (train/rollout.py).
    rollout_probability: float = 0.0
    rollout_max_offset: float = 0.2  # the rollout starts at σ + U(0, offset)·(1 − σ)
    rollout_steps: int = 2
    compile: bool = False  # regional torch.compile of the transformer blocks (CUDA)
    # checkpointing 'auto': GiB the run may use on the GPU (0 = 90 % of the card); blocks keep their
    # activations (no recompute) while the measured step still fits (train/memory.py)
    memory_budget_gib: float = 0.0
    # what blocks that keep their activations store for backward: bf16 (exact) | fp8 (e4m3, a scale per row;
    # half the bytes, so 'auto' keeps more blocks; opt-in, changes the gradients slightly)
    saved_activations: str = "bf16"
    optimizer_states: str = "fp32"  # adamw moments: fp32 | 8bit (fp8 with block scales, train/lowmem.py)
    optimizer_in_backward: bool = False  # update each weight as its gradient completes (no gradient buffer)
    # Within a bucket, batch samples of equal caption length first (attention needs no padding mask); only
    # the leftovers mix lengths. Changes the batch order, not what a batch computes.
    group_by_caption_length: bool = True
    # a batch of mixed caption lengths runs one unmasked forward per length instead of one masked forward
    # (train/lengths.py): the same loss, no padding-mask attention kernel
    split_caption_lengths: bool = False
    # lr × f(batch_size × grad_accum × processes): none | linear | sqrt (train/distributed.py; logged)
    scale_lr: str = "none"

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum

    def errors(self, at: str = "train") -> list[str]:
        out = _range(f"{at}.steps", self.steps, 1)
        out += _range(f"{at}.batch_size", self.batch_size, 1)
        out += _range(f"{at}.grad_accum", self.grad_accum, 1)
        out += _range(f"{at}.lr", self.lr, 0.0, 1.0)
        out += _choice(f"{at}.optimizer", self.optimizer, OPTIMIZERS)
        out += _choice(f"{at}.scheduler", self.scheduler, SCHEDULERS)
        out += _choice(f"{at}.precision", self.precision, PRECISIONS)
        out += _choice(f"{at}.checkpointing", self.checkpointing, CHECKPOINTING)
        out += _choice(f"{at}.timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS)
        out += _choice(f"{at}.shift_mode", self.shift_mode, SHIFT_MODES)
        out += _choice(f"{at}.loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        out += _choice(f"{at}.on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)
        out += _choice(f"{at}.scale_lr", self.scale_lr, ("none", "linear", "sqrt"))
        out += _range(f"{at}.warmup_steps", self.warmup_steps, 0)
        out += _range(f"{at}.max_grad_norm", self.max_grad_norm, 0.0)
        out += _range(f"{at}.caption_dropout", self.caption_dropout, 0.0, 1.0)
        out += _range(f"{at}.static_shift", self.static_shift, 0.01, 100.0)
        out += _range(f"{at}.logit_std", self.logit_std, 1e-3)
        out += _range(f"{at}.ema_decay", self.ema_decay, 0.0, 1.0)
        out += _range(f"{at}.ema_every_n_steps", self.ema_every_n_steps, 1)
        out += _range(f"{at}.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        out += _range(f"{at}.num_cycles", self.num_cycles, 1)
        out += _range(f"{at}.rollout_probability", self.rollout_probability, 0.0, 1.0)
        out += _range(f"{at}.rollout_max_offset", self.rollout_max_offset, 0.0, 1.0)
        out += _range(f"{at}.rollout_steps", self.rollout_steps, 1, 50)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            out.append(f"{at}.betas must be two numbers in [0, 1) (got {list(self.betas)})")
        return out + self._memory_errors(at)

    def _memory_errors(self, at: str) -> list[str]:
        out = _range(f"{at}.memory_budget_gib", self.memory_budget_gib, 0.0)
        out += _choice(f"{at}.optimizer_states", self.optimizer_states, OPTIMIZER_STATES)
        out += _choice(f"{at}.saved_activations", self.saved_activations, SAVED_ACTIVATIONS)
        if self.saved_activations != "bf16" and self.checkpointing == "on":
            out.append(f"{at}.saved_activations '{self.saved_activations}' applies to blocks that keep their "
                       "activations, and checkpointing 'on' keeps none; set checkpointing to 'auto' or 'off'")
        if (self.optimizer_states != "fp32" or self.optimizer_in_backward) and self.optimizer != "adamw":
            out.append(f"{at}.optimizer_states / optimizer_in_backward work with optimizer 'adamw' (got "
                       f"'{self.optimizer}'); choose 'adamw' or turn them off")
        if self.optimizer_in_backward and (self.grad_accum != 1 or self.max_grad_norm > 0):
            out.append(f"{at}.optimizer_in_backward needs grad_accum 1 and max_grad_norm 0 (got "
                       f"{self.grad_accum} and {self.max_grad_norm}): both need every gradient at once")
        return out
