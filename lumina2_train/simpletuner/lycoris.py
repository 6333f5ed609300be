"""SimpleTuner's lycoris_config JSON (LyCORIS algo, linear_dim, linear_alpha, factor, apply_preset) mapped to
`adapter.*`. Its keys are reported under the file's own name. No ComfyUI imports."""

from __future__ import annotations

import json
from typing import Any

from .context import Context

ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}
MAX_RANK = 1024  # AdapterConfig.rank's upper bound
REASONS = {
    "bypass_mode": "adapters always run beside the frozen layer (never merged during training)",
    "use_tucker": "Tucker decomposition applies to convolutions; Lumina2's trained layers are Linear",
    "use_scalar": "a trained scalar is not offered",
    "rank_dropout": "use adapter.dropout", "module_dropout": "use adapter.dropout",
    "weight_decompose": "use dora_wd", "train_norm": "norm layers are not trained",
}


def lycoris_config(ctx: Context, key: str, value: Any) -> None:
    """The lycoris_config key: read the file and map each of its keys."""
    if ctx.get("lora_type") != "lycoris":
        ctx.ignored(key, value, "lora_type is not 'lycoris'")
        return
    path = ctx.input_path(str(value))
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        ctx.problem(key, f"'{value}' cannot be read as JSON ({type(e).__name__})", "Give the LyCORIS JSON file")
        return
    if not isinstance(spec, dict):
        ctx.problem(key, f"'{value}' must hold a JSON object", "Write {\"algo\": \"lokr\", ...}")
        return
    ctx.used(key, value, f"read {path}")
    outer, ctx.source = ctx.source, path.name
    try:
        for name, item in spec.items():
            _one(ctx, name, item, spec)
    finally:
        ctx.source = outer


def _one(ctx: Context, key: str, value: Any, spec: dict[str, Any]) -> None:
    algo = ALGOS.get(str(spec.get("algo", "lora")))
    if key == "algo":
        if algo is None:
            ctx.problem(key, f"'{value}' is not offered (lora, locon, loha, lokr)", "Choose one of them")
        else:
            ctx.set(key, value, "adapter.kind", algo)
    elif key == "linear_dim" and (dim := ctx.as_int(key, value)) is not None:
        full = algo == "lokr" and (dim > MAX_RANK or spec.get("full_matrix"))
        note = "large enough for a full LoKr w2, as LyCORIS' 10000" if full else ""
        ctx.set(key, value, "adapter.rank", min(dim, MAX_RANK) if not full else MAX_RANK, note)
    elif key == "linear_alpha" and (alpha := ctx.as_float(key, value)) is not None:
        ctx.set(key, value, "adapter.alpha", alpha)
    elif key == "factor" and (factor := ctx.as_int(key, value)) is not None:
        ctx.set(key, value, "adapter.lokr_factor", factor)
    elif key == "full_matrix":
        ctx.used(key, value, "with linear_dim: a rank of at least half the factor's side keeps w2 full")
    elif key == "dora_wd" and (dora := ctx.as_bool(key, value)) is not None:
        ctx.set(key, value, "adapter.use_dora", dora)
    elif key == "dropout" and (p := ctx.as_float(key, value)) is not None:
        ctx.set(key, value, "adapter.dropout", p)
    elif key == "multiplier":
        ok = ctx.as_float(key, value) == 1.0
        (ctx.used if ok else ctx.ignored)(key, value, "strength 1 while training" if ok else
                                          "the strength is chosen when the LoRA is loaded")
    elif key == "apply_preset":
        _preset(ctx, key, value)
    else:
        ctx.ignored(key, value, REASONS.get(key, "no equivalent in this trainer"))


def _preset(ctx: Context, key: str, value: Any) -> None:
    modules = (value or {}).get("target_module", []) if isinstance(value, dict) else []
    groups = sorted({"attention" if "Attention" in m else "ffn" for m in modules
                     if "Attention" in m or "FeedForward" in m})
    if not groups:
        ctx.ignored(key, value, "only Attention and FeedForward modules map to adapter.targets")
        return
    per_module = "; per-module settings (module_algo_map) are not offered" if value.get("module_algo_map") else ""
    ctx.set(key, value, "adapter.targets", groups, f"target_module {modules}{per_module}")
