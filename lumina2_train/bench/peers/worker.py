"""The child process that runs one peer setting: `python -m lumina2_train.bench.peers.worker SPEC.json OUT.json`.

It reads the bench's weights (ComfyUI's / the original Lumina layout) and inputs from the safetensors files the
parent wrote (`write_shared`), runs the peer under the step clock and writes one row. The child needs no
diffusers (kohya pins an older one). `run_peer` is also called in-process by the CPU tests (tiny configs).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from ...comfyui.peer_trainlora import NodeSetting, PeerError
from .. import models
from .clock import step_clock
from .kohya import KohyaSetting

log = logging.getLogger(__name__)


def _row(timing, batch: int, clock, **extra) -> dict:
    return {"samples_per_s": batch / timing.step_s, "step_s": timing.step_s, "steps_s": timing.steps_s,
            "warmup_s": timing.warmup_s, "setup_s": clock.setup_s, "peak_gib": timing.peak_gib,
            "warmup_peak_gib": timing.warmup_peak_gib, "loss": timing.last_loss, **extra}


def run_comfy(spec: dict, config: dict, native: dict, inputs: models.Inputs, device: torch.device) -> dict:
    from ...comfyui import peer_trainlora as cn

    comfy = cn.import_comfyui(spec["root"], cpu=device.type != "cuda")
    setting = NodeSetting(**spec["setting"])
    node = comfy.nodes_train.TrainLoraNode
    widgets = cn.node_defaults(node)
    missing = sorted(set(setting.widgets) - set(widgets))
    if missing:
        return {"skipped": f"ComfyUI {comfy.version}'s TrainLoraNode has no {', '.join(missing)} widget",
                "version": comfy.version}
    with tempfile.TemporaryDirectory(prefix="lumina2t-comfy-unet-") as folder:  # kept while the node runs
        return _run_node(comfy, node, widgets, setting, spec, native, inputs, device, Path(folder))


def _run_node(comfy, node, widgets: dict, setting: NodeSetting, spec: dict, native: dict, inputs: models.Inputs,
              device: torch.device, folder: Path) -> dict:
    from ...comfyui import peer_trainlora as cn

    model = cn.load_model(comfy, native, quantized=setting.quantized, folder=folder)
    seen, handle = cn.forward_batch_sizes(model)
    accum = int(setting.widgets.get("grad_accumulation_steps", 1))
    per_step = int(setting.widgets.get("batch_size", widgets.get("batch_size", 1))) * accum
    steps = spec["warmup"] + spec["steps"]
    node_in = cn.node_inputs(node, model, inputs.latents, inputs.cap_feats, setting, steps, spec["rank"])
    with step_clock(device, spec["warmup"]) as clock:
        out = cn.execute(node, node_in)
    handle.remove()
    trainable = sum(t.numel() for t in _lora_tensors(out))
    return _row(clock.timing(cn.loss_of(out)), per_step, clock, version=comfy.version,
                forward_batches=sorted(set(seen)), forwards_per_step=len(seen) / max(1, len(clock.marks)),
                samples_per_step=per_step, trainable_params=trainable)


def _lora_tensors(out) -> list[torch.Tensor]:
    values = getattr(out, "result", out)
    for v in values:
        if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()):
            return list(v.values())
    return []


def run_kohya(spec: dict, config: dict, native: dict, inputs: models.Inputs, device: torch.device) -> dict:
    from . import kohya as ko

    k = ko.load_kohya(spec["root"])
    setting = KohyaSetting(**{**spec["setting"], "network_args": tuple(spec["setting"].get("network_args", ())),
                              "flags": tuple(spec["setting"].get("flags", ()))})
    args = ko.kohya_args(k, setting, spec["weights"])
    full = config == json.loads(json.dumps(models.FULL_DIT))  # kohya's loader builds the 2B config only
    dit = ko.load_dit(k, args) if full else ko.kohya_dit(k, config, native)
    built = ko.build_step(k, args, dit, inputs.latents, inputs.cap_feats, device)
    loss = float("nan")
    with step_clock(device, spec["warmup"]) as clock:
        for _ in range(spec["warmup"] + spec["steps"]):
            loss = built.step()
    return _row(clock.timing(loss), inputs.latents.shape[0], clock, trainable_params=built.trainable,
                lora_modules=built.modules, version=ko.checkout_version(k.root))


def run_simpletuner(spec: dict, config: dict, native: dict, inputs: models.Inputs, device: torch.device) -> dict:
    from ...backbones.keys import native_state_to_diffusers
    from . import simpletuner as stp

    st = stp.load_simpletuner(spec["root"])
    setting = stp.SimpleTunerSetting(**spec["setting"])
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    kv = config["num_kv_heads"] * head_dim
    state = native_state_to_diffusers(native, (config["hidden_size"], kv, kv))
    built = stp.build_step(st, config, state, inputs.latents, inputs.cap_feats, setting, spec["rank"], device)
    loss = float("nan")
    with step_clock(device, spec["warmup"]) as clock:
        for _ in range(spec["warmup"] + spec["steps"]):
            loss = built.step()
    return _row(clock.timing(loss), inputs.latents.shape[0], clock, trainable_params=built.trainable,
                lora_targets=built.targets, version=stp.checkout_version(st.root))


RUNNERS = {"comfy": run_comfy, "kohya": run_kohya, "simpletuner": run_simpletuner}


def write_shared(folder: Path, native: dict[str, torch.Tensor], inputs: models.Inputs) -> dict:
    """The weights and inputs every peer child reads: {'weights': path, 'inputs': path}."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"weights": str(folder / "weights.safetensors"), "inputs": str(folder / "inputs.safetensors")}
    weights = {k: v.detach().cpu().contiguous() for k, v in native.items()}
    # Every Lumina2 checkpoint ships norm_final.weight (diffusers' model has no such parameter, so the bench's
    # state dict lacks it); kohya's loader builds on the meta device and loads with strict=False, so without
    # it that weight stays on the meta device and moving the model to the GPU fails.
    dim = weights["x_embedder.weight"].shape[0]
    weights.setdefault("norm_final.weight", torch.ones(dim, dtype=weights["x_embedder.weight"].dtype))
    save_file(weights, paths["weights"])
    save_file({"latents": inputs.latents.detach().cpu().contiguous(),
               "cap_feats": inputs.cap_feats.detach().cpu().contiguous()}, paths["inputs"])
    return paths


def _read_shared(spec: dict, device: torch.device) -> tuple[dict, models.Inputs]:
    from safetensors.torch import load_file

    native = load_file(spec["weights"])
    t = load_file(spec["inputs"])
    return native, models.Inputs(t["latents"].to(device), t["cap_feats"].to(device), spec["res"])


def run_peer(spec: dict, device: torch.device | None = None) -> dict:
    """One peer setting -> its row (errors are recorded in the row, never raised)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    try:
        native, inputs = _read_shared(spec, device)
        row = RUNNERS[spec["peer"]](spec, spec["config"], native, inputs, device)
    except PeerError as e:
        row = {"skipped": str(e)}
    except Exception as e:  # a peer that breaks must not lose the bench run
        row = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    row.update(peer=spec["peer"], label=spec["setting"]["label"], wall_s=time.perf_counter() - t0)
    return row


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = json.loads(Path(argv[0]).read_text())
    row = run_peer(spec)
    out = Path(argv[1])
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        json.dump(row, f, default=str)
    Path(f.name).replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
