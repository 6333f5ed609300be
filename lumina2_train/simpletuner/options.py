"""config.json keys about the model, the adapter and the optimisation, mapped to our settings.

Each handler gets (context, key, value) and records what it did in the report. Keys about validation,
outputs and tracking are in outputs.py, dataset keys in backends.py. No ComfyUI imports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .context import Context

Handler = Callable[[Context, str, Any], None]

# SimpleTuner optimizer -> (ours, note); names not listed are ignored
OPTIMIZERS: dict[str, tuple[str, str]] = {
    "adamw_bf16": ("adamw_bf16", "optimi's AdamW with Kahan summation plays the part of SimpleTuner's bf16 AdamW"),
    "optimi-adamw": ("adamw_bf16", "optimi's AdamW (Kahan summation on)"),
    "optimi-stableadamw": ("optimi-stableadamw", ""),
    "adamw": ("adamw", ""),
    "bnb-adamw": ("adamw", "torch AdamW instead of bitsandbytes'"),
    "bnb-adamw8bit": ("adamw8bit", ""),
    "bnb-adamw8bit-paged": ("adamw8bit", "not paged"),
    "ao-adamw8bit": ("adamw8bit", "bitsandbytes' 8-bit AdamW instead of torchao's"),
    "lion": ("lion", ""),
    "optimi-lion": ("lion", "lion-pytorch's Lion"),
    "bnb-lion": ("lion", "lion-pytorch's Lion"),
    "prodigy": ("prodigy", ""),
    "adamw_schedulefree": ("adamw_schedulefree", ""),
    "adamw_schedulefree+aggressive": ("adamw_schedulefree", "the default schedule-free AdamW, not the aggressive one"),
    "adamw_schedulefree+no_kahan": ("adamw_schedulefree", ""),
    "adafactor": ("adafactor", ""),
}
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# SimpleTuner base_model_precision -> (ours, note); names not listed are ignored
PRECISIONS: dict[str, tuple[str, str]] = {
    "no_change": ("no_change", ""),
    "int8-torchao": ("int8-torchao", ""),
    "fp8-torchao": ("fp8-torchao", ""),
    "int8dq-torchao": ("int8-torchao", "weight-only int8; activations stay bf16"),
    "fp8wo-torchao": ("fp8-torchao", ""),
    "int8-quanto": ("int8", "our int8 storage (one scale per row) instead of optimum-quanto"),
    "fp8-quanto": ("fp8", "our fp8 e4m3 storage instead of optimum-quanto"),
    "fp8uz-quanto": ("fp8", "our fp8 e4m3 storage instead of optimum-quanto"),
    "fp8-native": ("fp8", "fp8 e4m3 storage, bf16 compute"),
}


def to(target: str, kind: str = "str", note: str = "") -> Handler:
    """A handler that converts the value (str | int | float | bool) and maps it to `target`."""

    def handle(ctx: Context, key: str, value: Any) -> None:
        conv = {"str": lambda k, v: str(v), "int": ctx.as_int, "float": ctx.as_float, "bool": ctx.as_bool}[kind]
        ours = conv(key, value)
        if ours is not None:
            ctx.set(key, value, target, ours, note)

    return handle


def _model_family(ctx: Context, key: str, value: Any) -> None:
    if value != "lumina2":
        ctx.problem(key, f"is '{value}', but this trainer trains Lumina-Image-2.0 only",
                    "Use a config written for model_family 'lumina2'")
    ctx.used(key, value, "checked: Lumina-Image-2.0")


def _model_type(ctx: Context, key: str, value: Any) -> None:
    if value == "full":
        ctx.set(key, value, "adapter.kind", "full")
    elif value == "lora":
        if ctx.get("lora_type", "standard") == "lycoris":
            ctx.used(key, value, "the LyCORIS algorithm comes from lycoris_config")
        else:
            ctx.set(key, value, "adapter.kind", "lora")
    else:
        ctx.problem(key, f"must be 'lora' or 'full' (got {value!r})", "Choose one")


def _lora_type(ctx: Context, key: str, value: Any) -> None:
    if value == "lycoris":
        if not ctx.get("lycoris_config"):
            ctx.problem(key, "is 'lycoris' but lycoris_config is not set", "Give the LyCORIS JSON file")
        ctx.used(key, value, "adapter.kind comes from lycoris_config's algo")
    else:
        ctx.used(key, value, "PEFT LoRA = adapter.kind 'lora'")


def _lycoris_decides(ctx: Context, key: str, value: Any) -> bool:
    if ctx.get("lora_type") == "lycoris":
        ctx.ignored(key, value, "lora_type is 'lycoris': linear_dim / linear_alpha in lycoris_config decide")
        return True
    return False


def _lora_alpha(ctx: Context, key: str, value: Any) -> None:
    if not _lycoris_decides(ctx, key, value):
        to("adapter.alpha", "float")(ctx, key, value)


def _lora_rank(ctx: Context, key: str, value: Any) -> None:
    if _lycoris_decides(ctx, key, value):
        return
    rank = ctx.as_int(key, value)
    if rank is None:
        return
    if "lora_alpha" in ctx.raw:
        ctx.set(key, value, "adapter.rank", rank)
    else:  # SimpleTuner's lora_alpha defaults to the rank
        ctx.set(key, value, "adapter.rank", rank, "lora_alpha is unset: adapter.alpha = rank, as in SimpleTuner")
        ctx.out.setdefault("adapter", {})["alpha"] = float(rank)


def _lora_init(ctx: Context, key: str, value: Any) -> None:
    if value in ("default", "gaussian"):
        ctx.set(key, value, "adapter.init", value)
    else:
        ctx.ignored(key, value, "only 'default' and 'gaussian' initialisations are offered (adapter.init)")


def _target_modules(ctx: Context, key: str, value: Any) -> None:
    """PEFT module names (diffusers' Lumina2 names) -> our target groups."""
    groups = {"to_q": "attention", "to_k": "attention", "to_v": "attention", "to_out": "attention",
              "linear_1": "ffn", "linear_2": "ffn", "linear_3": "ffn", "feed_forward": "ffn",
              "norm1.linear": "adaln", "adaLN": "adaln"}
    names = json.loads(value) if isinstance(value, str) and value.strip().startswith("[") else value
    found = [next((g for n, g in groups.items() if n in str(m)), None) for m in (names or [])]
    if not found or None in found:
        ctx.ignored(key, value, "only Lumina2 attention / feed-forward / adaLN module names map to adapter.targets")
        return
    ctx.set(key, value, "adapter.targets", sorted(set(found)), "module names grouped into our target groups")


def _optimizer(ctx: Context, key: str, value: Any) -> None:
    if value in OPTIMIZERS:
        ours, note = OPTIMIZERS[value]
        ctx.set(key, value, "train.optimizer", ours, note)
    else:
        ctx.ignored(key, value, f"no equivalent optimizer here; train.optimizer stays 'adamw' (ours: "
                                f"{', '.join(sorted({o for o, _ in OPTIMIZERS.values()}))})")


def _optimizer_config(ctx: Context, key: str, value: Any) -> None:
    """'weight_decay=0.01,eps=1e-8' -> our fields; other optimizer arguments are not passed through."""
    pairs = dict(p.split("=", 1) for p in str(value).split(",") if "=" in p)
    fields = {"weight_decay": "train.weight_decay", "eps": "train.eps"}
    mapped = {k.strip(): v for k, v in pairs.items() if k.strip() in fields}
    for name, raw in mapped.items():
        number = ctx.as_float(f"{key}:{name}", raw)
        if number is not None:
            ctx.set(f"{key}:{name}", raw, fields[name], number)
    rest = sorted(set(k.strip() for k in pairs) - set(mapped))
    if rest or not mapped:
        ctx.ignored(key, value, f"optimizer arguments {rest or list(pairs)} are not passed through; only "
                                "weight_decay and eps map (train.*)")


def _beta(index: int) -> Handler:
    def handle(ctx: Context, key: str, value: Any) -> None:
        beta = ctx.as_float(key, value)
        if beta is None:
            return
        betas = list(ctx.out.get("train", {}).get("betas", [0.9, 0.999]))
        betas[index] = beta
        ctx.set(key, value, "train.betas", betas, f"beta{index + 1}")

    return handle


def _scheduler(ctx: Context, key: str, value: Any) -> None:
    if value in SCHEDULERS:
        note = "warm-up (lr_warmup_steps) applies to every schedule here" if value == "constant" else ""
        ctx.set(key, value, "train.scheduler", value, note)
    else:
        ctx.ignored(key, value, f"no such schedule here; train.scheduler stays 'constant' ({', '.join(SCHEDULERS)})")


def _lr_end(ctx: Context, key: str, value: Any) -> None:
    end, lr = ctx.as_float(key, value), ctx.as_float("learning_rate", ctx.get("learning_rate", 1e-4))
    if end is None or lr is None:
        return
    if ctx.get("lr_scheduler") != "polynomial":
        ctx.ignored(key, value, "only SimpleTuner's polynomial schedule ends at lr_end")
    elif lr > 0:
        ctx.set(key, value, "train.min_lr_ratio", min(end / lr, 1.0), "lr_end / learning_rate")


def _seed(ctx: Context, key: str, value: Any) -> None:
    seed = ctx.as_int(key, value)
    if seed is not None:
        ctx.out.setdefault("data", {})["seed"] = seed
        ctx.set(key, value, "train.seed", seed, "also data.seed, which draws the crops at scan time")


def _mixed_precision(ctx: Context, key: str, value: Any) -> None:
    if value == "no":
        ctx.out.setdefault("model", {})["dtype"] = "fp32"
        ctx.set(key, value, "train.precision", "fp32", "also model.dtype 'fp32'")
    elif value == "bf16":
        ctx.set(key, value, "train.precision", "bf16")
    else:
        ctx.set(key, value, "train.precision", "bf16", f"'{value}' autocast is not offered; bf16 is used")


def _checkpointing(ctx: Context, key: str, value: Any) -> None:
    on = ctx.as_bool(key, value)
    if on is not None:
        ctx.set(key, value, "train.checkpointing", "on" if on else "off")


def _clip_method(ctx: Context, key: str, value: Any) -> None:
    if value == "norm":
        ctx.used(key, value, "gradients are clipped by norm (train.max_grad_norm)")
    else:
        ctx.ignored(key, value, "clipping by value is not offered; gradients are clipped by norm")


def _snr_gamma(ctx: Context, key: str, value: Any) -> None:
    gamma = ctx.as_float(key, value)
    if gamma is None:
        return
    if gamma > 0:
        ctx.out.setdefault("train", {})["loss_weighting"] = "min_snr"
        ctx.set(key, value, "train.min_snr_gamma", gamma, "with train.loss_weighting 'min_snr'")
    else:
        ctx.used(key, value, "0 = no min-SNR weighting (our default)")


def _ema_device(ctx: Context, key: str, value: Any) -> None:
    ctx.set(key, value, "train.ema_on_cpu", value == "cpu")


def _ema_validation(ctx: Context, key: str, value: Any) -> None:
    if value in ("none", "ema_only"):
        ctx.set(key, value, "validation.use_ema", value == "ema_only")
    else:
        ctx.ignored(key, value, "side-by-side EMA comparisons are not drawn; validation.use_ema picks one")


def _flow_auto_shift(ctx: Context, key: str, value: Any) -> None:
    on = ctx.as_bool(key, value)
    if on:
        ctx.set(key, value, "train.shift_mode", "resolution", "the same resolution-dependent shift, docs/recipe.md")
    elif on is not None:
        ctx.used(key, value, "off: the shift comes from flow_schedule_shift")


def _flow_shift(ctx: Context, key: str, value: Any) -> None:
    shift = ctx.as_float(key, value)
    if shift is None:
        return
    if ctx.as_bool("flow_schedule_auto_shift", ctx.get("flow_schedule_auto_shift", False)):
        ctx.ignored(key, value, "flow_schedule_auto_shift is on, so the shift follows the resolution")
    elif shift <= 0 or shift == 1:
        ctx.set(key, value, "train.shift_mode", "none", "no shift")
    else:
        ctx.out.setdefault("train", {})["shift_mode"] = "static"
        ctx.set(key, value, "train.static_shift", shift, "with train.shift_mode 'static'")


def _flow_uniform(ctx: Context, key: str, value: Any) -> None:
    on = ctx.as_bool(key, value)
    if on is not None:
        ctx.set(key, value, "train.timestep_sampling", "uniform" if on else "logit_normal")


def _flow_beta(ctx: Context, key: str, value: Any) -> None:
    if ctx.as_bool(key, value):
        ctx.ignored(key, value, "a beta timestep schedule is not offered (logit_normal or uniform)")
    else:
        ctx.used(key, value, "off")


def _precision(ctx: Context, key: str, value: Any) -> None:
    if value in PRECISIONS:
        ours, note = PRECISIONS[value]
        ctx.set(key, value, "model.base_precision", ours, note)
    else:
        ctx.ignored(key, value, "4-bit / 2-bit / engine-specific storage is not offered; the base stays in "
                                "model.dtype (ours: int8, fp8, int8-torchao, fp8-torchao)")


def _quantize_via(ctx: Context, key: str, value: Any) -> None:
    if value in ("cpu", "accelerator"):
        ctx.set(key, value, "model.quantize_via", value)
    else:
        ctx.ignored(key, value, "quantisation through the diffusers pipeline is not offered (cpu or accelerator)")


HANDLERS: dict[str, Handler] = {
    "model_family": _model_family, "model_type": _model_type, "lora_type": _lora_type,
    "lora_rank": _lora_rank, "lora_alpha": _lora_alpha, "lora_dropout": to("adapter.dropout", "float"),
    "lora_init_type": _lora_init, "use_dora": to("adapter.use_dora", "bool"), "init_lora": to("adapter.init_from"),
    "peft_lora_target_modules": _target_modules,
    "learning_rate": to("train.lr", "float"), "lr_scheduler": _scheduler,
    "lr_warmup_steps": to("train.warmup_steps", "int"), "lr_num_cycles": to("train.num_cycles", "int"),
    "lr_power": to("train.power", "float"), "lr_end": _lr_end,
    "train_batch_size": to("train.batch_size", "int"), "gradient_accumulation_steps": to("train.grad_accum", "int"),
    "max_grad_norm": to("train.max_grad_norm", "float"), "grad_clip_method": _clip_method,
    "optimizer": _optimizer, "optimizer_config": _optimizer_config,
    "adam_beta1": _beta(0), "adam_beta2": _beta(1), "optimizer_beta1": _beta(0), "optimizer_beta2": _beta(1),
    "adam_weight_decay": to("train.weight_decay", "float"), "adam_epsilon": to("train.eps", "float"),
    "seed": _seed, "mixed_precision": _mixed_precision, "gradient_checkpointing": _checkpointing,
    "caption_dropout_probability": to("train.caption_dropout", "float"), "snr_gamma": _snr_gamma,
    "use_ema": to("train.use_ema", "bool"), "ema_decay": to("train.ema_decay", "float"),
    "ema_update_interval": to("train.ema_every_n_steps", "int"), "ema_device": _ema_device,
    "ema_cpu_only": to("train.ema_on_cpu", "bool"), "ema_validation": _ema_validation,
    "flow_schedule_auto_shift": _flow_auto_shift, "flow_schedule_shift": _flow_shift,
    "flow_use_uniform_schedule": _flow_uniform, "flow_use_beta_schedule": _flow_beta,
    "flow_sigmoid_scale": to("train.logit_std", "float", "σ = sigmoid(scale · N(0, 1))"),
    "base_model_precision": _precision, "quantize_via": _quantize_via,
}
