"""Training-loop settings: optimiser, schedule, timesteps, loss, EMA, speed and memory options."""

from __future__ import annotations

from dataclasses import dataclass

from .choices import (
    CHECKPOINTING,
    LOSS_WEIGHTINGS,
    LR_SCALINGS,
    NONFINITE_POLICIES,
    OPTIMIZER_STATES,
    OPTIMIZERS,
    PRECISIONS,
    SAVED_ACTIVATIONS,
    SCHEDULERS,
    SEED_MAX,
    SHIFT_MODES,
    TIMESTEP_SAMPLINGS,
)
from .settings import setting, setting_errors

BIG = 10_000_000  # the widget's upper end of step counts


@dataclass(frozen=True)
class TrainConfig:
    steps: int = setting(1000, "Optimizer steps.", min=1, widget_max=BIG)
    batch_size: int = setting(1, "Images per micro-step (one aspect bucket each).", min=1, widget_max=1024)
    grad_accum: int = setting(1, "Micro-steps accumulated per optimizer step (effective batch = batch_size x "
                                 "this).", min=1, widget_max=1024)
    lr: float = setting(1e-4, "Learning rate (peak, after warm-up).", min=0.0, max=1.0, step=1e-6)
    optimizer: str = setting(
        "adamw", "adamw (default), adamw_bf16, adamw8bit (CUDA, bitsandbytes), lion, prodigy (set lr 1.0), "
        "optimi-stableadamw, adamw_schedulefree, adafactor. Optional packages are named in the error if missing.",
        choices=OPTIMIZERS)
    betas: tuple[float, float] = setting((0.9, 0.999), "Adam beta1, beta2, each in [0, 1).")
    eps: float = setting(1e-8, "Adam epsilon.", widget_min=0.0, widget_max=1.0, step=1e-9)
    weight_decay: float = setting(0.0, "Decoupled weight decay.", widget_min=0.0, widget_max=10.0, step=0.001)
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this; 0 = no clipping.", min=0.0,
                                   widget_max=1e4, step=0.1)
    scheduler: str = setting("constant", "Learning-rate schedule after warm-up.", choices=SCHEDULERS)
    warmup_steps: int = setting(0, "Linear warm-up steps from 0 to lr.", min=0, widget_max=BIG)
    num_cycles: int = setting(1, "cosine_with_restarts: number of cycles.", min=1, widget_max=1000)
    power: float = setting(1.0, "polynomial: the power of the decay.", widget_min=0.0, widget_max=10.0, step=0.1)
    min_lr_ratio: float = setting(0.0, "Where linear / cosine / polynomial decay ends, as a fraction of lr.",
                                  min=0.0, max=1.0, step=0.01)
    seed: int = setting(42, "Seed of the adapter init, noise, timesteps and batch order.", widget_min=0,
                        widget_max=SEED_MAX)
    # fp32 on a CPU without native bf16 (train/speed.py)
    precision: str = setting("bf16", "Autocast dtype of forward/backward (bf16 on GPUs; fp32 on CPU).",
                             choices=PRECISIONS)
    checkpointing: str = setting("on", "Activation checkpointing: on (least memory), off (fastest), auto (keeps "
                                       "activations while memory_budget_gib allows).", choices=CHECKPOINTING)
    timestep_sampling: str = setting("logit_normal", "How noise levels are drawn: logit_normal (Lumina2's recipe) "
                                                     "or uniform.", choices=TIMESTEP_SAMPLINGS)
    logit_mean: float = setting(0.0, "logit_normal: mean.", widget_min=-10.0, widget_max=10.0, step=0.01)
    logit_std: float = setting(1.0, "logit_normal: standard deviation.", min=1e-3, widget_max=10.0, step=0.01)
    shift_mode: str = setting("resolution", "resolution: shift sigma by the image size (Lumina2/Flux auto shift); "
                                            "static: by static_shift; none: no shift.", choices=SHIFT_MODES)
    static_shift: float = setting(3.0, "shift_mode static: the shift.", min=0.01, max=100.0, step=0.1)
    loss_weighting: str = setting("none", "Per-noise-level loss weights: none, min_snr, cosmap.",
                                  choices=LOSS_WEIGHTINGS)
    min_snr_gamma: float = setting(5.0, "min_snr: gamma.", widget_min=0.0, widget_max=100.0, step=0.1)
    # off by default; the official recipe trains with 0.1 (docs/recipe.md)
    caption_dropout: float = setting(0.0, "Probability of training a sample with an empty text (helps CFG). "
                                          "Default 0; the official recipe uses 0.1.", min=0.0, max=1.0, step=0.01)
    use_ema: bool = setting(False, "Keep an exponential moving average of the adapter weights.")
    ema_decay: float = setting(0.999, "EMA decay (with warm-up).", min=0.0, max=1.0, step=0.0001)
    ema_every_n_steps: int = setting(1, "Update the EMA every N steps.", min=1, widget_max=100_000)
    ema_on_cpu: bool = setting(False, "Keep the EMA on the CPU (saves GPU memory).")
    on_nonfinite: str = setting("stop", "A NaN/inf loss: stop (after a checkpoint) or skip the update.",
                                choices=NONFINITE_POLICIES)
    # Scheduled sampling (EXPERIMENTAL, train/rollout.py)
    rollout_probability: float = setting(0.0, "Probability of reaching a sample's noise level by a short Euler "
                                              "rollout from a higher one instead of exact interpolation.",
                                         min=0.0, max=1.0, step=0.01)
    rollout_max_offset: float = setting(0.2, "Rollout start: sigma + U(0, offset) x (1 - sigma).", min=0.0,
                                        max=1.0, step=0.01)
    rollout_steps: int = setting(2, "Euler steps of a rollout.", min=1, max=50)
    compile: bool = setting(False, "Regional torch.compile of the transformer blocks (CUDA).")
    # blocks keep their activations (no recompute) while the measured step still fits (train/memory.py)
    memory_budget_gib: float = setting(0.0, "checkpointing auto: GiB the run may use (0 = 90 % of the card).",
                                       min=0.0, widget_max=4096.0, step=0.5)
    # backbones/selective.py; spent before whole kept blocks (train/memory.py); opt-in until measured on a GPU
    selective_recompute: bool = setting(False, "checkpointing auto: blocks that cannot keep all their activations "
                                               "keep their qkv GEMM and attention outputs and recompute the rest, "
                                               "where the budget allows (same numbers, less recompute).")
    # fp8: e4m3 with a scale per row (opt-in)
    saved_activations: str = setting(
        "bf16", "What blocks that keep their activations store for backward: bf16 (exact) or fp8 (half the "
        "memory, so checkpointing auto keeps more blocks; changes the gradients slightly). Needs checkpointing "
        "auto/off.", choices=SAVED_ACTIVATIONS)
    # 8bit: fp8 with block scales (train/lowmem.py)
    optimizer_states: str = setting("fp32", "adamw moments in fp32 or 8-bit.", choices=OPTIMIZER_STATES)
    optimizer_in_backward: bool = setting(False, "Update each weight as its gradient completes (needs grad_accum "
                                                 "1 and max_grad_norm 0).")
    # only the leftovers of a bucket mix lengths
    group_by_caption_length: bool = setting(True, "Within a bucket, batch captions of equal length first (no "
                                                  "attention padding). Changes the batch order only.")
    # train/lengths.py
    split_caption_lengths: bool = setting(False, "A batch of mixed caption lengths runs one unmasked forward per "
                                                 "length instead of a masked one (same loss, faster kernel).")
    # train/distributed.py; logged
    scale_lr: str = setting("none", "Scale lr by the effective batch size (batch_size x grad_accum x "
                                    "processes): none, linear or sqrt.", choices=LR_SCALINGS)

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum

    def errors(self, at: str = "train") -> list[str]:
        out = setting_errors(self, at)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            out.append(f"{at}.betas must be two numbers in [0, 1) (got {list(self.betas)})")
        return out + self._memory_errors(at)

    def _memory_errors(self, at: str) -> list[str]:
        out = []
        if self.saved_activations != "bf16" and self.checkpointing == "on":
            out.append(f"{at}.saved_activations '{self.saved_activations}' applies to blocks that keep their "
                       "activations, and checkpointing 'on' keeps none; set checkpointing to 'auto' or 'off'")
        if self.selective_recompute and self.checkpointing != "auto":
            out.append(f"{at}.selective_recompute plans blocks under checkpointing 'auto' (got checkpointing "
                       f"'{self.checkpointing}'); set checkpointing to 'auto' or selective_recompute to false")
        if (self.optimizer_states != "fp32" or self.optimizer_in_backward) and self.optimizer != "adamw":
            out.append(f"{at}.optimizer_states / optimizer_in_backward work with optimizer 'adamw' (got "
                       f"'{self.optimizer}'); choose 'adamw' or turn them off")
        if self.optimizer_in_backward and (self.grad_accum != 1 or self.max_grad_norm > 0):
            out.append(f"{at}.optimizer_in_backward needs grad_accum 1 and max_grad_norm 0 (got "
                       f"{self.grad_accum} and {self.max_grad_norm}): both need every gradient at once")
        return out
