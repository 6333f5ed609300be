"""SimpleTuner's Lumina2 LoRA step, driven without its launcher, on our weights and inputs.

From a checkout of bghira/SimpleTuner (never part of this repository; only its `simpletuner/` package is
imported, not installed): the model wrapper is SimpleTuner's `helpers.models.lumina2.model.Lumina2` around its
own copy of the transformer (`helpers.models.lumina2.transformer`, diffusers' module names, loaded strictly
from the bench's weights); the LoRA is its `add_lora_adapter` (PEFT, its default targets); the step is what its
trainer runs per batch: `prepare_batch` (noise, its flow sigmas and shift), `model_predict`, `loss_with_logs`,
backward, grad-norm clipping, optimizer step. Its config machinery (argparse, StateTracker, the web SDK) is not
used: the fields its model reads are set here, each to SimpleTuner's default unless named. torch AdamW stands in
for its default `adamw_bf16`. Imports SimpleTuner only inside `load_simpletuner`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from ...comfyui.peer_trainlora import PeerError

_MODEL = Path("simpletuner") / "helpers" / "models" / "lumina2" / "model.py"


@dataclass(frozen=True)
class SimpleTunerSetting:
    label: str
    gradient_checkpointing: bool = True
    max_grad_norm: float = 2.0  # SimpleTuner's default
    flow_schedule_shift: float = 6.0  # its Lumina2 quickstart


def load_simpletuner(root: str) -> SimpleNamespace:
    path = Path(root).resolve()
    if not (path / _MODEL).is_file():
        raise PeerError(f"{path}: no {_MODEL.as_posix()} here. Pass a checkout of bghira/SimpleTuner "
                        "(--simpletuner PATH, the folder that holds simpletuner/)")
    sys.path.insert(0, str(path))
    from simpletuner.helpers.models.lumina2.model import Lumina2
    from simpletuner.helpers.models.lumina2.transformer import Lumina2Transformer2DModel

    return SimpleNamespace(Lumina2=Lumina2, Transformer=Lumina2Transformer2DModel, root=path)


def _config(folder: Path, setting: SimpleTunerSetting, rank: int, dtype: torch.dtype) -> SimpleNamespace:
    """The fields SimpleTuner's Lumina2 wrapper reads; its scheduler comes from folder/scheduler."""
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
         "shift": setting.flow_schedule_shift, "use_dynamic_shifting": False}))
    return SimpleNamespace(
        model_family="lumina2", model_flavour=None, model_type="lora", lora_type="standard",
        pretrained_model_name_or_path=str(folder), pretrained_vae_model_name_or_path=None, vae_path=None,
        flow_schedule_shift=setting.flow_schedule_shift, flow_schedule_auto_shift=False, flow_sigmoid_scale=1.0,
        flux_fast_schedule=False, flow_use_beta_schedule=False, flow_use_uniform_schedule=False,
        flow_matching=True, offset_noise=False, input_perturbation=0.0, weight_dtype=dtype,
        base_weight_dtype=dtype, lora_rank=rank, lora_alpha=rank, lora_dropout=0.0,
        lora_initialisation_style=True, loss_type="l2", fuse_qkv_projections=False, controlnet=False)


@dataclass
class SimpleTunerStep:
    step: Callable[[], float]
    trainable: int
    targets: list
    keep: list = field(default_factory=list)


def build_step(st: SimpleNamespace, config: dict, diffusers_state: dict[str, torch.Tensor], latents: torch.Tensor,
               cap_feats: torch.Tensor, setting: SimpleTunerSetting, rank: int, device: torch.device
               ) -> SimpleTunerStep:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    folder = Path(tempfile.mkdtemp(prefix="lumina2t-simpletuner-"))
    accelerator = SimpleNamespace(device=device, unwrap_model=lambda m, **_k: m, num_processes=1, process_index=0)
    model = st.Lumina2(_config(folder, setting, rank, dtype), accelerator)
    transformer = st.Transformer(**config)
    transformer.load_state_dict(diffusers_state, strict=True)
    transformer.requires_grad_(False).to(device, dtype)
    if setting.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    model.model = transformer
    model.add_lora_adapter()
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:  # trained adapters in fp32 over the bf16 base, as the reference step
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4)
    b, L = cap_feats.shape[:2]
    batch = {"latent_batch": latents.to(device, torch.float32), "prompt_embeds": cap_feats.to(device, dtype),
             "encoder_attention_mask": torch.ones(b, L, device=device)}
    count = [0]

    def step() -> float:
        prepared = model.prepare_batch(dict(batch), state={"global_step": count[0]})
        loss, _ = model.loss_with_logs(prepared, model.model_predict(prepared))
        loss.backward()
        if setting.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, setting.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        count[0] += 1
        return float(loss.detach())

    targets = list(getattr(model, "lora_config", SimpleNamespace(target_modules=[])).target_modules or [])
    return SimpleTunerStep(step, sum(p.numel() for p in params), targets, [model, transformer, opt])


def checkout_version(root: Path) -> str:
    f = Path(root) / "COMMIT"
    return f.read_text().strip()[:12] if f.is_file() else "-"
