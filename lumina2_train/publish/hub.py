"""The model card (README.md) of a run folder and its upload to the Hugging Face Hub (`hub.*` settings).

The local files always come first: the card is written into the run folder before any upload, and a failed
upload (no network, HF_HUB_OFFLINE, no login) raises HubError naming `hub.model_id`, the run folder and the
command that uploads it later. Intermediate checkpoint uploads never stop a run; they log a warning.
huggingface_hub (a diffusers dependency) is imported only when something is uploaded. No ComfyUI imports.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..adapters.kinds import describe, kind_of
from ..config import RunConfig
from ..errors import HubError, OptionalDependencyError
from ..train.hooks import TrainHooks

log = logging.getLogger(__name__)

BASE_MODEL = "Alpha-VLLM/Lumina-Image-2.0"
UPLOADED = ["README.md", "*.safetensors", "loras/*.safetensors", "samples/*.png", "config.json", "losses.json"]


# ---------------------------------------------------------------- the model card


def trigger_prompts(cfg: RunConfig) -> list[str]:
    """The instance prompts of the datasets (their trigger words), in order, without repeats."""
    found = [d.instance_prompt for d in cfg.data.datasets if d.caption_strategy == "instance" and d.instance_prompt]
    return list(dict.fromkeys(found))


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def _front_matter(cfg: RunConfig, samples: list[tuple[str, str]]) -> list[str]:
    kind = kind_of(cfg.adapter)
    tags = ["lumina2", "text-to-image", *kind.hub_tags]
    lines = ["---", f"base_model: {BASE_MODEL}", f"base_model_relation: {kind.hub_relation}",
             "license: apache-2.0", "pipeline_tag: text-to-image", "tags:"] + [f"- {t}" for t in tags]
    triggers = trigger_prompts(cfg)
    if triggers:
        lines.append(f"instance_prompt: {_q(triggers[0])}")
    if samples:
        lines.append("widget:")
        for prompt, rel in samples:
            lines += [f"- text: {_q(prompt)}", "  output:", f"    url: {_q(rel)}"]
    return lines + ["---"]


def _settings_table(cfg: RunConfig, step: int) -> list[str]:
    from ..recipe import system_prompt_text

    a, t, c = cfg.adapter, cfg.train, cfg.cache
    adapter, targets = describe(a)
    shift = {"resolution": "resolution-dependent", "static": f"static {t.static_shift:g}", "none": "none"}
    sizes = ", ".join(sorted({f"{d.resolution} ({d.resolution_type})" for d in cfg.data.datasets})) or "-"
    rows = [("adapter", adapter), ("trained layers", targets),
            ("steps", f"{step} of {t.steps} (batch {t.batch_size} × accumulation {t.grad_accum})"),
            ("learning rate", f"{t.lr:g}, {t.scheduler} schedule, {t.warmup_steps} warm-up steps"),
            ("optimizer", t.optimizer), ("precision", t.precision), ("gradient clipping", f"{t.max_grad_norm:g}"),
            ("timesteps", f"{t.timestep_sampling}, shift {shift[t.shift_mode]}"),
            ("caption dropout", f"{t.caption_dropout:g}"),
            ("EMA", f"decay {t.ema_decay:g}" if t.use_ema else "off"), ("resolution", sizes),
            ("seed", str(t.seed)),
            ("system prompt", f"{c.system_prompt}: {_q(system_prompt_text(c.system_prompt, c.custom_system_prompt))}")]
    return ["| setting | value |", "|---|---|"] + [f"| {k} | {v.replace('|', '/')} |" for k, v in rows]


def model_card(cfg: RunConfig, *, lora_file: str, step: int, samples: list[tuple[str, str]] = ()) -> str:
    """README.md text: YAML front matter (base model, tags, trigger, sample widget) and the training settings.

    Args:
        lora_file: the weights file's name in the repository.
        samples: (prompt, path relative to the card) of the final validation images.
    """
    from ..train.validation import named_prompts

    title = cfg.hub.model_id.split("/")[-1] if cfg.hub.model_id else Path(cfg.save.name).name
    prompts = [p for _, p in named_prompts(cfg.validation)]
    kind = kind_of(cfg.adapter)
    what = kind.card_name
    weights = "the whole diffusion model with native keys: ComfyUI's Load Diffusion Model reads it" \
        if kind.writes_model else f"format: {cfg.save.format}; ComfyUI's LoraLoader reads the default format"
    body = ["", f"# {title}", "", f"{what} of [{BASE_MODEL}](https://huggingface.co/{BASE_MODEL}), "
            f"trained with comfyui-lumina2-train. Weights: `{lora_file}` ({weights}).", ""]
    triggers = trigger_prompts(cfg)
    if triggers:
        body += ["## Trigger words", "", *[f"- `{p}`" for p in triggers], ""]
    if prompts:
        body += ["## Validation prompts", "", *[f"- {p}" for p in prompts], ""]
        if cfg.validation.negative_prompt:
            body += [f"Negative prompt: {cfg.validation.negative_prompt}", ""]
    if samples:
        body += ["## Samples", "", *[f"![{p}]({rel})" for p, rel in samples], ""]
    body += ["## Training settings", "", *_settings_table(cfg, step), "",
             "Sample with the same system prompt as in training (ComfyUI: CLIPTextEncodeLumina2).", ""]
    return "\n".join(_front_matter(cfg, list(samples)) + body)


def write_model_card(cfg: RunConfig, result) -> Path:
    """Write README.md into the run folder of a TrainResult; returns its path."""
    from ..storage.atomic import atomic_write_text

    run_dir = Path(result.run_dir)
    samples = []
    if result.validations:
        last = result.validations[-1]
        for prompt, path in zip(last.prompts, last.paths):
            try:
                samples.append((prompt, Path(path).relative_to(run_dir).as_posix()))
            except ValueError:  # an image outside the run folder cannot be linked from the card
                continue
    lora_name = Path(result.lora_path).name if result.lora_path else ""
    card = run_dir / "README.md"
    atomic_write_text(card, model_card(cfg, lora_file=lora_name, step=result.step, samples=samples))
    return card


# ---------------------------------------------------------------- uploads


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _api():
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise OptionalDependencyError("huggingface_hub", "hub.push", "huggingface_hub") from None
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)  # read now: tests point it at localhost


def _failure(cfg: RunConfig, run_dir: Path, why: str) -> HubError:
    repo = cfg.hub.model_id
    return HubError(f"hub.model_id '{repo}': the upload to the Hugging Face Hub failed ({why}). The trained files "
                    f"are complete in {run_dir}; upload them later with `hf upload {repo} {run_dir}` once online "
                    "and logged in (`hf auth login`), or set hub.push to false")


def push_run(cfg: RunConfig, result, api=None) -> str:
    """Write the model card, then upload the run folder's LoRA, card, samples and config (and checkpoints with
    hub.push_checkpoints) to hub.model_id. Returns the repository URL.

    Raises:
        HubError: offline, not logged in, or any upload failure; the local files are left complete.
    """
    run_dir = Path(result.run_dir)
    card = write_model_card(cfg, result)
    log.info("model card: %s", card)
    if is_offline():
        raise _failure(cfg, run_dir, "HF_HUB_OFFLINE is set, so nothing can be uploaded")
    patterns = UPLOADED + (["checkpoints/**"] if cfg.hub.push_checkpoints else [])
    try:
        api = api or _api()
        url = api.create_repo(cfg.hub.model_id, private=cfg.hub.private, exist_ok=True)
        api.upload_folder(repo_id=cfg.hub.model_id, folder_path=str(run_dir), allow_patterns=patterns,
                          commit_message=f"Lumina2 {cfg.adapter.kind}: step {result.step}")
        lora = Path(result.lora_path) if result.lora_path else None
        if lora is not None and run_dir not in lora.parents:  # saved outside the run folder (ComfyUI loras/)
            api.upload_file(path_or_fileobj=str(lora), path_in_repo=lora.name, repo_id=cfg.hub.model_id)
    except OptionalDependencyError:
        raise
    except Exception as e:  # network, auth, server: all end the same way for the user
        raise _failure(cfg, run_dir, f"{type(e).__name__}: {e}") from e
    log.info("uploaded to %s", url)
    return str(url)


def hub_hooks(cfg: RunConfig, api=None) -> TrainHooks:
    """With hub.push_checkpoints: upload each intermediate checkpoint and LoRA as soon as it is written.

    A failure is logged (once) and the run goes on; the final push_run reports for good.
    """
    if not cfg.hub.push_checkpoints:
        return TrainHooks()
    state: dict = {"api": api, "failed": False, "has_repo": False}

    def upload(kind: str, path: Path, step: int) -> None:
        if state["failed"] or step >= cfg.train.steps:  # the final files go up with push_run
            return
        try:
            if is_offline():
                raise RuntimeError("HF_HUB_OFFLINE is set")
            state["api"] = state["api"] or _api()
            if not state["has_repo"]:
                state["api"].create_repo(cfg.hub.model_id, private=cfg.hub.private, exist_ok=True)
                state["has_repo"] = True
            if kind == "checkpoint":
                state["api"].upload_folder(repo_id=cfg.hub.model_id, folder_path=str(path),
                                           path_in_repo=f"checkpoints/{path.name}", commit_message=f"step {step}")
            else:
                state["api"].upload_file(path_or_fileobj=str(path), path_in_repo=f"loras/{path.name}",
                                         repo_id=cfg.hub.model_id, commit_message=f"step {step}")
        except Exception as e:  # keep training; the files are on disk
            state["failed"] = True
            log.warning("hub.push_checkpoints: uploading %s to '%s' failed (%s: %s); training goes on and no more "
                        "intermediate uploads are tried", path, cfg.hub.model_id, type(e).__name__, e)

    return TrainHooks(on_checkpoint=lambda path, step: upload("checkpoint", Path(path), step),
                      on_lora_saved=lambda path, step: upload("lora", Path(path), step))
