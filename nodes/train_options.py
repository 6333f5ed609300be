"""Every TrainConfig / SaveConfig option (and model.base_compute) as a widget of 'Train Adapter or Full Model
(Lumina2, Advanced)', and back to the configs.

Widget ids are the config field names (save options get a `save_` prefix where a name would clash); defaults and
choices come from lumina2_train.config, so the node, the CLI and validation share one source.
"""

from __future__ import annotations

from ..lumina2_train.config import (
    BASE_COMPUTES,
    CHECKPOINTING,
    LOSS_WEIGHTINGS,
    NONFINITE_POLICIES,
    OPTIMIZER_STATES,
    OPTIMIZERS,
    PRECISIONS,
    SAVE_DTYPES,
    SAVED_ACTIVATIONS,
    SCHEDULERS,
    SHIFT_MODES,
    TIMESTEP_SAMPLINGS,
    ModelConfig,
    SaveConfig,
    TrainConfig,
    from_dict,
)
from ._api import advanced, io

_T = TrainConfig()
_S = SaveConfig()
SAVE_WIDGETS = {"save_format": "format", "save_dtype": "dtype", "save_every_n_steps": "every_n_steps",
                "keep_last": "keep_last", "save_ema": "save_ema"}
MODEL_WIDGETS = ("base_compute",)  # ModelConfig fields the advanced node sets (the MODEL input gives the rest)
BIG = 10_000_000


def _int(name: str, tip: str, lo: int = 0, hi: int = BIG, **kw) -> io.Int.Input:
    return io.Int.Input(name, default=getattr(_T, name), min=lo, max=hi, tooltip=tip, **kw)


def _float(name: str, tip: str, lo: float = 0.0, hi: float = 1e6, step: float = 0.01) -> io.Float.Input:
    return io.Float.Input(name, default=getattr(_T, name), min=lo, max=hi, step=step, round=False, tooltip=tip)


def _combo(name: str, options, tip: str) -> io.Combo.Input:
    return io.Combo.Input(name, options=list(options), default=getattr(_T, name), tooltip=tip)


def _bool(name: str, tip: str) -> io.Boolean.Input:
    return io.Boolean.Input(name, default=getattr(_T, name), tooltip=tip)


def _optimizer_inputs() -> list[io.Input]:
    return [
        _int("steps", "Optimizer steps.", 1),
        _int("batch_size", "Images per micro-step (one aspect bucket each).", 1, 1024),
        _int("grad_accum", "Micro-steps accumulated per optimizer step (effective batch = batch_size x this).",
             1, 1024),
        _float("lr", "Learning rate (peak, after warm-up).", 0.0, 1.0, 1e-6),
        _combo("optimizer", OPTIMIZERS, "adamw (default), adamw_bf16, adamw8bit (CUDA, bitsandbytes), lion, "
                                        "prodigy (set lr 1.0), optimi-stableadamw, adamw_schedulefree, adafactor. "
                                        "Optional packages are named in the error if missing."),
        io.Float.Input("beta1", default=_T.betas[0], min=0.0, max=0.9999, step=0.001, tooltip="Adam beta1."),
        io.Float.Input("beta2", default=_T.betas[1], min=0.0, max=0.99999, step=0.0001, tooltip="Adam beta2."),
        advanced(_float("eps", "Adam epsilon.", 0.0, 1.0, 1e-9)),
        _float("weight_decay", "Decoupled weight decay.", 0.0, 10.0, 0.001),
        _float("max_grad_norm", "Clip the gradient norm to this; 0 = no clipping.", 0.0, 1e4, 0.1),
        _combo("scheduler", SCHEDULERS, "Learning-rate schedule after warm-up."),
        _int("warmup_steps", "Linear warm-up steps from 0 to lr."),
        advanced(_int("num_cycles", "cosine_with_restarts: number of cycles.", 1, 1000)),
        advanced(_float("power", "polynomial: the power of the decay.", 0.0, 10.0, 0.1)),
        _float("min_lr_ratio", "Where linear / cosine / polynomial decay ends, as a fraction of lr.", 0.0, 1.0),
        _int("seed", "Seed of the adapter init, noise, timesteps and batch order.", 0, 2**31 - 1,
             control_after_generate=False),
    ]


def _recipe_inputs() -> list[io.Input]:
    return [
        _combo("precision", PRECISIONS, "Autocast dtype of forward/backward (bf16 on GPUs; fp32 on CPU)."),
        _combo("checkpointing", CHECKPOINTING, "Activation checkpointing: on (least memory), off (fastest), auto "
                                               "(keeps activations while memory_budget_gib allows)."),
        _combo("timestep_sampling", TIMESTEP_SAMPLINGS, "How noise levels are drawn: logit_normal (Lumina2's "
                                                        "recipe) or uniform."),
        _float("logit_mean", "logit_normal: mean.", -10.0, 10.0),
        _float("logit_std", "logit_normal: standard deviation.", 0.001, 10.0),
        _combo("shift_mode", SHIFT_MODES, "resolution: shift sigma by the image size (Lumina2/Flux auto shift); "
                                          "static: by static_shift; none: no shift."),
        _float("static_shift", "shift_mode static: the shift.", 0.01, 100.0, 0.1),
        _combo("loss_weighting", LOSS_WEIGHTINGS, "Per-noise-level loss weights: none, min_snr, cosmap."),
        _float("min_snr_gamma", "min_snr: gamma.", 0.0, 100.0, 0.1),
        _float("caption_dropout", "Probability of training a sample with an empty text (helps CFG). Default 0; the "
               "official recipe uses 0.1.", 0.0, 1.0),
        advanced(_float("rollout_probability", "Probability of reaching a sample's noise level by a short Euler "
                                               "rollout from a higher one instead of exact interpolation.", 0.0, 1.0)),
        advanced(_float("rollout_max_offset", "Rollout start: sigma + U(0, offset) x (1 - sigma).", 0.0, 1.0)),
        advanced(_int("rollout_steps", "Euler steps of a rollout.", 1, 50)),
        _bool("use_ema", "Keep an exponential moving average of the adapter weights."),
        _float("ema_decay", "EMA decay (with warm-up).", 0.0, 1.0, 0.0001),
        advanced(_int("ema_every_n_steps", "Update the EMA every N steps.", 1, 100_000)),
        advanced(_bool("ema_on_cpu", "Keep the EMA on the CPU (saves GPU memory).")),
        _combo("on_nonfinite", NONFINITE_POLICIES, "A NaN/inf loss: stop (after a checkpoint) or skip the update."),
        advanced(_bool("compile", "Regional torch.compile of the transformer blocks (CUDA).")),
        advanced(_float("memory_budget_gib", "checkpointing auto: GiB the run may use (0 = 90 % of the card).",
                        0.0, 4096.0, 0.5)),
        advanced(_combo("optimizer_states", OPTIMIZER_STATES, "adamw moments in fp32 or 8-bit.")),
        advanced(_bool("optimizer_in_backward", "Update each weight as its gradient completes (needs grad_accum 1 "
                                                "and max_grad_norm 0).")),
        advanced(_bool("group_by_caption_length", "Within a bucket, batch captions of equal length first (no "
                                                  "attention padding). Changes the batch order only.")),
        advanced(_bool("split_caption_lengths", "A batch of mixed caption lengths runs one unmasked forward per "
                                                "length instead of a masked one (same loss, faster kernel).")),
        advanced(_combo("scale_lr", ("none", "linear", "sqrt"), "Scale lr by the effective batch size (batch_size "
                                                                 "x grad_accum x processes): none, linear or sqrt.")),
    ]


def _save_inputs() -> list[io.Input]:
    return [
        io.Combo.Input("save_format", options=["comfyui", "kohya"], default=_S.format,
                       tooltip="comfyui: native module names (also loads in diffusers when every block is "
                               "adapted). kohya: lora_unet_* names. Both load in ComfyUI; export diffusers files "
                               "with Save Adapter."),
        io.Combo.Input("save_dtype", options=list(SAVE_DTYPES), default=_S.dtype, tooltip="dtype of the saved file."),
        io.Int.Input("save_every_n_steps", default=_S.every_n_steps, min=0, max=BIG,
                     tooltip="Also write a resumable checkpoint and a LoRA file every N steps (in the run folder); "
                             "0 = only at the end."),
        io.Int.Input("keep_last", default=_S.keep_last, min=1, max=1000,
                     tooltip="Checkpoints kept in the run folder (LoRA files are all kept)."),
        io.Boolean.Input("save_ema", default=_S.save_ema, tooltip="With use_ema: the file holds the EMA weights."),
    ]


def _fp8_inputs() -> list[io.Input]:
    """Last in the node, so the widget values of workflows saved before they existed keep their places."""
    return [
        advanced(_combo("saved_activations", SAVED_ACTIVATIONS, "What blocks that keep their activations store for "
                                                                "backward: bf16 (exact) or fp8 (half the memory, so "
                                                                "checkpointing auto keeps more blocks; changes the "
                                                                "gradients slightly). Needs checkpointing auto/off.")),
        advanced(io.Combo.Input("base_compute", options=list(BASE_COMPUTES), default=ModelConfig().base_compute,
                                tooltip="GEMMs of the frozen model's block Linears while training: bf16 (exact) or fp8 "
                                        "(e4m3 tensor cores, NVIDIA Ada/Hopper; about 1.3x faster at 1024 px, the loss "
                                        "within 0.3 % of bf16's, docs/benchmarks.md). fp8_emulated: the same maths on "
                                        "any device, slow (for checking). Adapters, loss and previews stay exact.")),
    ]


def advanced_train_inputs() -> list[io.Input]:
    return [*_optimizer_inputs(), *_recipe_inputs(), *_save_inputs(), *_fp8_inputs()]


def model_from_widgets(widgets: dict) -> ModelConfig:
    """ModelConfig holding the advanced node's model settings (MODEL_WIDGETS); the rest stays default."""
    return from_dict(ModelConfig, {k: widgets[k] for k in MODEL_WIDGETS if k in widgets})


def train_from_widgets(widgets: dict) -> TrainConfig:
    """TrainConfig from the advanced node's widgets (every key a TrainConfig field, betas as beta1/beta2)."""
    values = {k: v for k, v in widgets.items()
              if k not in SAVE_WIDGETS and k not in MODEL_WIDGETS and k not in ("beta1", "beta2")}
    return from_dict(TrainConfig, {**values, "betas": [widgets["beta1"], widgets["beta2"]]})


def save_from_widgets(widgets: dict) -> SaveConfig:
    return from_dict(SaveConfig, {field: widgets[w] for w, field in SAVE_WIDGETS.items()})


__all__ = ["MODEL_WIDGETS", "SAVE_WIDGETS", "advanced_train_inputs", "model_from_widgets", "save_from_widgets",
           "train_from_widgets"]
