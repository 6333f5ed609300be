"""Whether a checkpoint may continue under the current settings and dataset.

A checkpoint stores a data position (epoch, batch) and an optimiser state. The resume is refused where they no
longer mean the same: another dataset (images, captions, buckets, repeats, order, held-out items), another
global batch, seed, accumulation, adapter or optimiser layout. Any other change (more steps, save, validation or
logging cadence, paths) is harmless for that position: it is allowed and logged, field by field.
No ComfyUI imports.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..errors import CheckpointError
from ..storage.fingerprint import json_fingerprint

log = logging.getLogger(__name__)
# Settings that must match for a resume to continue the same run (everything else is compared and logged).
RESUME_KEYS = {
    "adapter": None,  # whole section
    "train": ("batch_size", "grad_accum", "optimizer", "betas", "eps", "weight_decay", "seed",
              "timestep_sampling", "shift_mode", "static_shift", "logit_mean", "logit_std", "loss_weighting",
              "caption_dropout", "scheduler", "warmup_steps", "use_ema", "group_by_caption_length",
              "optimizer_states", "optimizer_in_backward"),  # the optimiser state's layout depends on both
}
# Values of resume-critical settings that older checkpoints predate (what those runs did).
RESUME_DEFAULTS = {("train", "group_by_caption_length"): False, ("train", "optimizer_states"): "fp32",
                   ("train", "optimizer_in_backward"): False}
# Entries compared on their own terms, never field by field.
SPECIAL = {"data_order", "distributed", "resume_from"}
HASHES = {"cache_fingerprint": "the cache's latents or text features (cache or model settings)",
          "base_model_hash": "the base model's weights (model.transformer)"}
FIX = ("Resume with the checkpoint's settings and dataset (its config.json lists them), or start a new run "
       "(adapter.init_from can start it from a LoRA this run saved)")


def data_order(cache, buckets: dict) -> str:
    """A fingerprint of what a data position points at: each trained item (its content, caption, bucket,
    repeats, crop; not where its file lies) in bucket order, after the held-out items are taken out."""
    items = getattr(cache, "items", None)

    def identity(i: int):
        if items is not None:
            return {k: v for k, v in dataclasses.asdict(items[i]).items() if k not in ("path", "mask_path")}
        s = cache.samples[i]  # an in-memory TensorCache
        return [s.caption, list(s.latent.shape), cache.repeats(i), s.loss_weight, s.is_regularisation]

    return json_fingerprint([[list(b), [identity(i) for i in idxs]] for b, idxs in sorted(buckets.items())])


def check_compatible(saved: dict, current: dict, where: Path) -> None:
    """CheckpointError listing every change that moves the data position or the optimiser state; a warning
    in the log naming every other changed setting.

    The batch may be split over another number of processes: what must stay is the global batch
    (batch_size × processes), which fixes the data order and each sample's noise.
    """
    refused = _key_diffs(saved, current) + _global_batch_diff(saved, current)
    changed = _leaf_diffs(saved, current)
    data = [d for d in changed if d.startswith(("data.", "validation.eval_holdout"))]
    if "data_order" in saved and saved["data_order"] != current.get("data_order"):
        refused += [f"the trained images, captions, buckets, repeats or their order (data order "
                    f"{saved['data_order']}, now {current.get('data_order')})", *data]
    elif "data_order" not in saved:  # an older checkpoint: any dataset setting may have moved the position
        refused += data
    if refused:
        raise CheckpointError(f"{where}: this checkpoint was made with other settings or another dataset, so "
                              f"its data position no longer means the same batches ({'; '.join(refused)}). {FIX}")
    critical = {f"{s}.{k}" for s, keys in RESUME_KEYS.items() for k in (keys or ())}
    harmless = [d for d in changed if d.split(":")[0] not in critical and not d.startswith("adapter.")]
    harmless += [f"{what} changed" for key, what in HASHES.items()
                 if key in saved and saved[key] != current.get(key)]
    if harmless:
        log.warning("%s: resuming with settings that changed but keep the data position (%s)", where,
                    "; ".join(harmless))


def _key_diffs(saved: dict, current: dict) -> list[str]:
    diffs = []
    for section, keys in RESUME_KEYS.items():
        a, b = saved.get(section, {}), current.get(section, {})
        for k in keys or sorted(set(a) | set(b)):
            was = a.get(k, RESUME_DEFAULTS.get((section, k)))
            if k != "batch_size" and was != b.get(k):
                diffs.append(f"{section}.{k}: checkpoint {was!r}, now {b.get(k)!r}")
    return diffs


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _leaf_diffs(saved: dict, current: dict) -> list[str]:
    """'field: checkpoint X, now Y' for every setting that differs (lists of sections entry by entry). A
    setting the checkpoint predates is skipped: the run it comes from used that setting's old behaviour."""
    out: list[str] = []
    missing = object()

    def walk(a, b, name: str) -> None:
        if a is missing:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, missing), b.get(k), f"{name}.{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and any(
                isinstance(x, dict) for x in a):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{name}[{i}]")
        elif a != b:
            out.append(f"{name}: checkpoint {_short(a)}, now {_short(b)}")

    for k in sorted((set(saved) | set(current)) - SPECIAL - set(HASHES)):
        walk(saved.get(k, missing), current.get(k), k)
    return out


def _global_batch_diff(saved: dict, current: dict) -> list[str]:
    def world(d: dict) -> int:
        return int(d.get("distributed", {}).get("world_size", 1))

    was, now = saved.get("train", {}).get("batch_size"), current.get("train", {}).get("batch_size")
    if was is None or now is None:
        return [] if was == now else [f"train.batch_size: checkpoint {was!r}, now {now!r}"]
    w0, w1 = world(saved), world(current)
    if was * w0 == now * w1:
        return []
    line = f"train.batch_size: checkpoint {was!r}, now {now!r}"
    if w0 != w1:
        g = was * w0
        fix = f"set train.batch_size to {g // w1}" if g % w1 == 0 else f"use a number of processes dividing {g}"
        line += f" (on {w0} → {w1} processes the global batch {g} must stay: {fix})"
    return [line]
