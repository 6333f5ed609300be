"""Runs bench groups: per group the reference step, then each variant of ours through the library's own
Trainer (the code the Train node runs), all on the same random weights and inputs. Only one model is
resident while a step is measured. No ComfyUI imports here (models.comfy_backbone imports it).
"""

from __future__ import annotations

import gc
import logging
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapters import build_adapters
from ..config import AdapterConfig, ModelConfig, RunConfig, SaveConfig, TrainConfig
from ..train import TensorCache, TensorSample
from ..train.batches import DataPosition
from ..train.loop import Trainer
from ..train.step import Batch
from . import measure, models, profile
from .cases import FULL_TARGETS, REF_BUDGET, TARGETS, Group, Variant
from .report import environment, render

log = logging.getLogger(__name__)


@dataclass
class Settings:
    device: torch.device
    config: dict
    comfy_path: str = ""  # a ComfyUI folder; '' skips ComfyUI variants
    matmul_tflops: float = 0.0
    profile: Path | None = None  # --profile: a folder for traces; each variant is then profiled too


def run_config(group: Group, v: Variant, budget_gib: float, out_dir: str, training_adapter: str = "") -> RunConfig:
    """The RunConfig our step trains with for this variant (what a user would set to get it)."""
    full = group.mode == "full"
    adapter = AdapterConfig(kind="full" if full else "lora", rank=group.rank, alpha=float(group.rank),
                            targets=FULL_TARGETS if full else TARGETS[group.targets], training_adapter=training_adapter)
    train = TrainConfig(steps=1_000_000, batch_size=group.batch, lr=1e-5 if full else 1e-4, precision="bf16",
                        checkpointing=v.ckpt, compile=v.compile, memory_budget_gib=budget_gib,
                        max_grad_norm=0.0 if full else 1.0, optimizer_states="8bit" if full else "fp32",
                        optimizer_in_backward=full, seed=0, split_caption_lengths=v.split_lengths,
                        saved_activations=v.saved_activations, selective_recompute=v.selective)
    model = ModelConfig(base_precision="no_change" if v.base_precision == "bf16" else v.base_precision,
                        base_compute=v.base_compute)
    return RunConfig(model=model, adapter=adapter, train=train, save=SaveConfig(output_dir=out_dir)).validate(
        need_data=False)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _parity_inputs(inputs: models.Inputs):
    return models.noisy(inputs.latents, inputs.res, torch.Generator().manual_seed(7))


def run_reference(group: Group, weights: dict, inputs: models.Inputs, s: Settings) -> dict:
    model = models.build_dit(s.config, s.device, state=weights)
    x_sigma, sigma, target = _parity_inputs(inputs)
    with torch.no_grad():
        pred = models.reference_velocity(model, x_sigma, sigma, inputs.cap_feats, inputs.cap_mask)
    parity = {"pred": pred.cpu(), "loss": float(F.mse_loss(pred, target))}
    if group.mode == "full":
        step = models.reference_full_step(model, inputs)
    else:
        step = models.reference_lora_step(model, group, inputs)
    timing = measure.time_steps(step, s.device, min(group.warmup, 2), group.steps)
    del model, step
    _free()
    return {"timing": timing, "parity": parity}


def _backbone(v: Variant, native: dict, s: Settings):
    if v.backbone == "comfy":
        if not s.comfy_path:
            raise RuntimeError("no ComfyUI tree (set --comfyui or COMFYUI_PATH)")
        return models.comfy_backbone(s.config, native, s.device, s.comfy_path)
    return models.diffusers_backbone(s.config, native, s.device)


def _training_adapter_file(backbone, rank: int, folder: Path) -> str:
    """A random LoRA of `rank` on every block Linear (attention, FFN, adaLN), as de-distillation adapters are."""
    from ..adapters import select_targets
    from ..files.formats import LoraModule, save_lora

    gen = torch.Generator().manual_seed(3)
    mods = {}
    for name in select_targets(backbone.arch, AdapterConfig(targets=TARGETS["all"])):
        out_f, in_f = backbone.linear(name).weight.shape
        mods[name] = LoraModule(torch.randn(rank, in_f, generator=gen) * 0.01, torch.randn(out_f, rank, generator=gen)
                                * 0.01)
    return str(save_lora(mods, folder / "training_adapter.safetensors", arch=backbone.arch))


def _tensor_cache(inputs: models.Inputs) -> TensorCache:
    """The training set as the trainer's dataset (each caption cut to its own length)."""
    if inputs.dataset:
        return TensorCache([TensorSample(latent=lat, cap_feats=feats) for lat, feats in inputs.dataset])
    lat, feats = inputs.latents.float().cpu(), inputs.cap_feats.float().cpu()
    cut = [feats.shape[1]] * lat.shape[0] if inputs.cap_mask is None else inputs.cap_mask.sum(1).tolist()
    return TensorCache([TensorSample(latent=lat[i], cap_feats=feats[i, : cut[i]]) for i in range(lat.shape[0])])


def _flops_and_parity(group: Group, backbone, cfg: RunConfig, inputs: models.Inputs, ref: dict | None) -> dict:
    """FLOPs per sample (batch 1, no recompute) and, against the reference, the loss on identical inputs."""
    out: dict = {}
    adapters = build_adapters(backbone, cfg.adapter, backbone.device, seed=0)
    n0 = inputs.cap_feats.shape[1] if inputs.cap_mask is None else int(inputs.cap_mask[0].sum())
    h, w = inputs.latents.shape[-2:]
    one = Batch(inputs.latents[:1].float().cpu(), inputs.cap_feats[:1, :n0].float().cpu(), None, torch.ones(1), None,
                (w * 8, h * 8))
    out["flops"] = measure.step_flops(backbone, adapters.as_dict(), one, dtype=torch.bfloat16)
    out["attention_ops"] = measure.attention_ops(backbone, adapters.as_dict(), one, dtype=torch.bfloat16)
    backbone.tree.zero_grad(set_to_none=True)
    if ref is not None:
        x_sigma, sigma, target = _parity_inputs(inputs)
        with torch.no_grad():
            pred = backbone.velocity(x_sigma.to(torch.bfloat16), sigma, inputs.cap_feats.to(torch.bfloat16),
                                     inputs.cap_mask, adapters.as_dict()).float()
        ref_pred = ref["parity"]["pred"].to(pred.device)
        loss = float(F.mse_loss(pred, target))
        out["parity"] = {"reference_loss": ref["parity"]["loss"], "ours_loss": loss,
                         "loss_rel_diff": abs(loss - ref["parity"]["loss"]) / max(abs(ref["parity"]["loss"]), 1e-12),
                         "pred_rel_l2": float((pred - ref_pred).norm() / ref_pred.norm())}
    del adapters
    _free()
    return out


def run_variant(group: Group, v: Variant, native: dict, inputs: models.Inputs, s: Settings, ref: dict | None,
                extra: dict) -> dict:
    """Time one variant of ours; `extra` collects the group's FLOPs and parity on the first call."""
    import torch._dynamo.utils as dyn

    ref_peak = ref["timing"].peak_gib if ref else 0.0
    budget = ref_peak if v.memory_budget_gib == REF_BUDGET else v.memory_budget_gib
    backbone = _backbone(v, native, s)
    with tempfile.TemporaryDirectory() as tmp:
        under = _training_adapter_file(backbone, v.training_adapter_rank, Path(tmp)) if v.training_adapter_rank else ""
        cfg = run_config(group, v, budget, tmp, under)
        if "flops" not in extra:
            extra.update(_flops_and_parity(group, backbone, cfg, inputs, ref))
        trainer = Trainer(cfg, backbone, _tensor_cache(inputs), run_dir=tmp)
        # the bench drives the trainer's own set-up (built by the constructor) and optimizer step, minus saving
        graphs = dyn.counters["stats"]["unique_graphs"]
        with trainer.micro_batches(DataPosition()) as feed:
            def step(t=trainer) -> float:
                return t._optimizer_step(feed)[0]

            timing = measure.time_steps(step, s.device, group.warmup, group.steps)
            prof = None if s.profile is None else profile.profile_steps(
                step, s.device, 2, profile.trace_path(s.profile, group.name, v.label))
            del step
        kept = dict(backbone.options.keep_activations)
        selective = dict(backbone.options.selective_blocks)
        if trainer.setup.release is not None:
            trainer.setup.release.remove()
        del trainer
    del backbone
    _free()
    row = _row(v, timing, group, ref, extra, s)
    row.update(budget_gib=budget, graphs=dyn.counters["stats"]["unique_graphs"] - graphs,
               blocks_kept={f"{b}x{t}": k for (b, t), k in kept.items()},
               blocks_selective={f"{b}x{t}": k for (b, t), k in selective.items()})
    if prof is not None:
        row["profile"] = prof
    return row


def _step_s(group: Group, t: measure.Timing) -> float:
    """Seconds per step: the median, or the mean where batches differ (mixed caption lengths, buckets)."""
    return statistics.fmean(t.steps_s) if models.dataset_size(group) > group.batch else t.step_s


def _row(v: Variant, t: measure.Timing, group: Group, ref: dict | None, extra: dict, s: Settings) -> dict:
    sps = group.batch / _step_s(group, t)
    flops = extra.get("flops", {}).get("total", 0)
    row = {"variant": asdict(v), "label": v.label, "samples_per_s": sps, "step_s": t.step_s, "steps_s": t.steps_s,
           "peak_gib": t.peak_gib, "warmup_peak_gib": t.warmup_peak_gib, "warmup_s": t.warmup_s,
           "compile_warmup_s": t.compile_warmup_s, "loss": t.last_loss,
           "mfu": flops * sps / (s.matmul_tflops * 1e12) if s.matmul_tflops and flops else 0.0}
    if ref is not None:
        row["ratio"] = sps / (group.batch / _step_s(group, ref["timing"]))
        row["ref_peak_gib"] = ref["timing"].peak_gib
    return row


def run_group(group: Group, weights: dict, native: dict, s: Settings) -> dict:
    """Reference, then every variant; a failing variant is recorded with its error and the run goes on."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    inputs = models.make_inputs(group, s.config, s.device)
    out: dict = {"group": {k: v for k, v in asdict(group).items() if k != "variants"}, "variants": []}
    ref = None
    if group.reference:
        ref = run_reference(group, weights, inputs, s)
        t = ref["timing"]
        out["reference"] = {"samples_per_s": group.batch / _step_s(group, t), "step_s": t.step_s, "steps_s": t.steps_s,
                            "peak_gib": t.peak_gib, "loss": t.last_loss}
    extra: dict = {}
    t0 = time.perf_counter()
    for v in group.variants:
        log.info("bench: %s / %s (at %.0f s)", group.name, v.label, time.perf_counter() - t0)
        try:
            out["variants"].append(run_variant(group, v, native, inputs, s, ref, extra))
        except Exception as e:  # one failing variant must not lose the others' figures
            log.error("bench: %s / %s failed: %s", group.name, v.label, e)
            out["variants"].append({"label": v.label, "variant": asdict(v), "error": f"{type(e).__name__}: {e}",
                                    "traceback": traceback.format_exc()[-4000:]})
            _free()
        log.info("bench: %s", {k: out["variants"][-1].get(k) for k in ("samples_per_s", "peak_gib", "ratio")})
    out.update(extra)
    flops = extra.get("flops", {}).get("total", 0)
    if ref is not None and flops and s.matmul_tflops:
        out["reference"]["mfu"] = flops * out["reference"]["samples_per_s"] / (s.matmul_tflops * 1e12)
    out["flops_per_sample"] = flops
    return out


def _peers(g: Group, native: dict, s: Settings, specs: list, steps: tuple[int, int]) -> list[dict]:
    from .peers.run import PeerRun, run_peers

    _free()
    run = PeerRun(s.config, g.res, g.batch, g.rank, g.caption_tokens, warmup=steps[0], steps=steps[1])
    return run_peers(run, specs, native, models.make_inputs(g, s.config, s.device))


def _comfy_root(path: str) -> tuple[str, str]:
    """(ComfyUI folder or '', its version or '')."""
    if not path:
        return "", ""
    root = Path(path).expanduser().resolve()
    if not (root / "comfy" / "model_management.py").is_file():
        log.warning("bench: %s holds no ComfyUI (no comfy/model_management.py); ComfyUI rows are skipped", root)
        return "", ""
    version_file = root / "comfyui_version.py"
    text = version_file.read_text() if version_file.is_file() else ""
    version = next((line.split("=")[1].strip().strip("\"'") for line in text.splitlines()
                    if line.startswith("__version__")), "")
    return str(root), version


def run_bench(groups: list[Group], *, comfy_path: str = "", attention: bool = True,
              device: torch.device | None = None, config: dict | None = None, profile_dir: Path | None = None,
              on_group: Callable[[dict], None] | None = None, peers: list | None = None,
              peer_steps: tuple[int, int] = (1, 4)) -> tuple[dict, str]:
    """Run every group on fresh random full-size weights (or `config`); returns (report, printed tables).

    `peers` (peers.run.PeerSpec list) run after the first group, on its shape, weights and inputs, each in a
    child process; `peer_steps` = (warm-up, timed) optimizer steps of each. `on_group(report)` is called
    after each group (the CLI writes the JSON then, so a cut-off run keeps what it measured)."""
    device = device or torch.device("cuda")
    root, comfy_version = _comfy_root(comfy_path)
    s = Settings(device, config or models.CONFIGS[groups[0].family], comfy_path=root, profile=profile_dir)
    s.matmul_tflops = measure.matmul_tflops(device) if device.type == "cuda" else 0.0
    report = {"environment": environment(device, comfy_version), "matmul_tflops": s.matmul_tflops, "groups": []}
    weights = native = None
    for i, g in enumerate(groups):
        want = config or models.CONFIGS[g.family]  # `config` (tests: a tiny model) serves every group
        if weights is None or want is not s.config:
            weights = native = None
            _free()
            s.config = want
            weights = models.random_weights(s.config, device)
            native = models.native_state(weights, s.config)
        report["groups"].append(run_group(g, weights, native, s))
        if on_group is not None:
            on_group(report)
        if peers and i == 0:
            report["groups"][0]["peers"] = _peers(g, native, s, peers, peer_steps)
            if on_group is not None:  # again: the peers can take minutes, and their rows join the group's
                on_group(report)
    if attention and device.type == "cuda":
        g = groups[0]
        tokens = g.caption_tokens + (g.res // 16) ** 2
        report["attention"] = measure.attention_kernels(device, g.batch, tokens)
    return report, render(report)
