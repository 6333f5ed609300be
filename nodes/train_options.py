"""Every TrainConfig / SaveConfig option (and model.base_compute, model.variant) as a widget of 'Train Adapter or Full Model
(Lumina2, Advanced)', and back to the configs.

Widget ids are the config field names (save options get a `save_` prefix where a name would clash); each widget's
default, range, choices and tooltip come from its field's declaration (lumina2_train/config/settings.py), so the
node, the CLI, validation and docs/settings.md share one source. The ORDER below is what saved workflows store
values by: add new widgets at the end.
"""

from __future__ import annotations

from ..lumina2_train.config import ModelConfig, SaveConfig, TrainConfig, from_dict
from ._api import advanced, io, widget

_T = TrainConfig()
SAVE_WIDGETS = {"save_format": "format", "save_dtype": "dtype", "save_every_n_steps": "every_n_steps",
                "keep_last": "keep_last", "save_ema": "save_ema"}
MODEL_WIDGETS = ("base_compute", "variant")  # ModelConfig fields the advanced node sets (the MODEL input gives the rest)
# TrainConfig widgets in their saved order; a '+' marks an advanced (collapsed) one
_OPTIMIZER = ("steps", "batch_size", "grad_accum", "lr", "optimizer", "beta1", "beta2", "+eps", "weight_decay",
              "max_grad_norm", "scheduler", "warmup_steps", "+num_cycles", "+power", "min_lr_ratio", "seed")
_RECIPE = ("precision", "checkpointing", "timestep_sampling", "logit_mean", "logit_std", "shift_mode",
           "static_shift", "loss_weighting", "min_snr_gamma", "caption_dropout", "+rollout_probability",
           "+rollout_max_offset", "+rollout_steps", "use_ema", "ema_decay", "+ema_every_n_steps", "+ema_on_cpu",
           "on_nonfinite", "+compile", "+memory_budget_gib", "+optimizer_states", "+optimizer_in_backward",
           "+group_by_caption_length", "+scale_lr")
# widgets added after the previous release: after every older widget (resume_from included), so the positional
# widget values of workflows saved before they existed keep their places (tests/comfy/test_previous_release.py)
_ADDED = ("+split_caption_lengths",)


def _train_widget(entry: str) -> io.Input:
    name = entry.lstrip("+")
    if name in ("beta1", "beta2"):  # the betas tuple as two widgets (node-only: a tuple has no widget)
        i = int(name[-1]) - 1
        w = io.Float.Input(name, default=_T.betas[i], min=0.0, max=(0.9999, 0.99999)[i], step=(0.001, 0.0001)[i],
                           tooltip=f"Adam {name}.")
    else:
        kw = {"round": False} if isinstance(getattr(_T, name), float) else {}
        kw |= {"control_after_generate": False} if name == "seed" else {}
        w = widget(TrainConfig, name, **kw)
    return advanced(w) if entry.startswith("+") else w


def _save_inputs() -> list[io.Input]:
    return [
        # diffusers files are exported with Save Adapter (they do not load in ComfyUI)
        widget(SaveConfig, "format", id="save_format", options=("comfyui", "kohya"),
               tooltip="comfyui: native module names (also loads in diffusers when every block is adapted). kohya: "
                       "lora_unet_* names. Both load in ComfyUI; export diffusers files with Save Adapter."),
        widget(SaveConfig, "dtype", id="save_dtype"),
        widget(SaveConfig, "every_n_steps", id="save_every_n_steps"),
        widget(SaveConfig, "keep_last"),
        widget(SaveConfig, "save_ema"),
    ]


def advanced_train_inputs() -> list[io.Input]:
    return [*map(_train_widget, _OPTIMIZER + _RECIPE), *_save_inputs()]


def added_inputs() -> list[io.Input]:
    """The widgets added after the previous release, for the end of the node (see _ADDED). Optional: the frontend
    orders required widgets before optional ones, and resume_from, the previous release's last, is optional."""
    return [*(advanced(widget(TrainConfig, e.lstrip("+"), optional=True)) for e in _ADDED),
            advanced(widget(TrainConfig, "saved_activations", optional=True)),
            advanced(widget(ModelConfig, "base_compute", optional=True)),
            advanced(widget(ModelConfig, "variant", optional=True)),  # Z-Image-Turbo or Base; auto: the file name
            advanced(widget(TrainConfig, "selective_recompute", optional=True))]  # newest: last


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


__all__ = ["MODEL_WIDGETS", "SAVE_WIDGETS", "added_inputs", "advanced_train_inputs", "model_from_widgets", "save_from_widgets",
           "train_from_widgets"]
