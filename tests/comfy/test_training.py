"""Training on a ComfyUI MODEL: the LoRA file loads in stock ComfyUI with every key, the patched MODEL equals the
in-training model, and the input MODEL is never modified (DESIGN decisions 2 and 3)."""

import logging
from types import SimpleNamespace

import pytest
import torch

from lumina2_train.backbones.comfy import ComfyBackbone
from lumina2_train.backbones.inference import training_mode
from lumina2_train.comfyui.bridge import apply_lora_to_model, comfy_hooks
from lumina2_train.config import TARGET_GROUPS, AdapterConfig, RunConfig, SaveConfig, TrainConfig
from lumina2_train.errors import FormatError
from lumina2_train.train import Trainer

from builders import comfy_velocity, square_cache

pytestmark = pytest.mark.comfy
LORA_NAME = "lumina2t_test_all_groups.safetensors"


def _ksample(comfy, model, cond):
    """A short stock KSampler run (euler, 2 steps, fixed seed) on `model`: the unrelated use of the MODEL."""
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    positive = [[cond, {"attention_mask": torch.ones(cond.shape[:2], dtype=torch.long)}]]
    with torch.inference_mode():
        (out,) = comfy.nodes.common_ksampler(model, 7, 2, 1.0, "euler", "simple", positive, positive, latent)
    return out["samples"].clone()


class _Server:
    client_id = "test-client"

    def __init__(self):
        self.events = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data, sid))


@pytest.fixture(scope="module")
def trained(comfy, comfy_model, comfy_models, state_hash, tmp_path_factory):
    """Train a LoRA on every target group, the way the Train node will (inference mode outside, hooks on)."""
    tree = comfy_model.model.diffusion_model
    cond = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))
    before = SimpleNamespace(hash=state_hash(tree), flags={n: p.requires_grad for n, p in tree.named_parameters()},
                             sample=_ksample(comfy, comfy_model, cond))
    cfg = RunConfig(adapter=AdapterConfig(rank=4, alpha=4.0, targets=TARGET_GROUPS),
                    train=TrainConfig(steps=3, batch_size=1, lr=2e-3, precision="fp32", checkpointing="off", seed=1),
                    save=SaveConfig(dtype="fp32"))
    server, progress = _Server(), []
    old_instance = getattr(comfy.server.PromptServer, "instance", None)
    comfy.server.PromptServer.instance = server
    comfy.utils.set_progress_bar_global_hook(lambda v, total, preview, node_id=None: progress.append((v, total)))
    try:
        with torch.inference_mode():  # ComfyUI runs nodes under inference mode
            backbone = ComfyBackbone.from_model_patcher(comfy_model)
            with training_mode():
                trainer = Trainer(cfg, backbone, square_cache((6, 4, 6)), comfy_hooks("42", cfg.train.steps),
                                  run_dir=tmp_path_factory.mktemp("run"), lora_path=comfy_models["loras"] / LORA_NAME)
                result = trainer.run()
    finally:
        comfy.server.PromptServer.instance = old_instance
        comfy.utils.set_progress_bar_global_hook(None)
    after = SimpleNamespace(hash=state_hash(tree), flags={n: p.requires_grad for n, p in tree.named_parameters()},
                            sample=_ksample(comfy, comfy_model, cond))
    return SimpleNamespace(backbone=backbone, result=result, before=before, after=after, events=server.events,
                           progress=progress, cond=cond)


def test_input_model_is_untouched(trained):
    assert trained.after.hash == trained.before.hash
    assert trained.after.flags == trained.before.flags
    assert torch.equal(trained.after.sample, trained.before.sample)


def test_progress_and_events_reach_comfyui(trained):
    assert [v for v, _ in trained.progress] == [1, 2, 3] and trained.progress[-1][1] == 3
    steps = [d for e, d, _ in trained.events if e == "lumina2t.step"]
    assert [d["step"] for d in steps] == [1, 2, 3] and all(d["node"] == "42" for d in steps)
    assert all(sid == "test-client" for _, _, sid in trained.events)
    kinds = {e for e, _, _ in trained.events}
    assert {"lumina2t.status", "lumina2t.checkpoint"} <= kinds


def test_lora_loads_in_stock_comfyui_and_equals_training(comfy, comfy_model, trained, comfy_inputs, caplog):
    x, sigma, feats = comfy_inputs(b=2, L=6, seed=5)
    adapters = trained.result.adapters
    assert {n.split(".")[0] for n in adapters.names} >= {"layers", "noise_refiner", "context_refiner"}
    assert len(adapters) == 34  # every Linear of the 1-layer model: all five target groups
    with torch.no_grad():
        base = trained.backbone.velocity(x, sigma, feats, None)
        ours = trained.backbone.velocity(x, sigma, feats, None, adapters.as_dict())
    assert (ours - base).abs().max() > 1e-3  # the LoRA changes the output

    with caplog.at_level(logging.WARNING), torch.inference_mode():
        (stock,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(comfy_model, LORA_NAME, 1.0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert len({k for k in stock.patches if k.endswith(".weight")}) == 34
    with torch.inference_mode():
        comfy.mm.load_models_gpu([stock])
    from_file = comfy_velocity(stock, x, sigma, feats)
    assert (from_file - ours).abs().max() <= 1e-5

    with torch.inference_mode():
        applied = apply_lora_to_model(comfy_model, trained.result.lora_path)
        comfy.mm.load_models_gpu([applied])
    assert torch.equal(comfy_velocity(applied, x, sigma, feats), from_file)


def test_apply_lora_refuses_keys_comfyui_does_not_load(comfy, comfy_model):
    sd = {"diffusion_model.layers.0.attention.qkv.lora_A.weight": torch.zeros(4, 2304),
          "diffusion_model.layers.0.attention.qkv.lora_B.weight": torch.zeros(3840, 4),
          "transformer.layers.0.attn.to_q.lora_A.weight": torch.zeros(4, 2304)}
    with torch.inference_mode(), pytest.raises(FormatError, match="did not load"):
        apply_lora_to_model(comfy_model, sd)
