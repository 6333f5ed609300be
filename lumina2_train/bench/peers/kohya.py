"""kohya sd-scripts' Lumina LoRA step, driven as `lumina_train_network.py` drives it, on our weights and inputs.

From a checkout of kohya-ss/sd-scripts (never part of this repository): the model is built by kohya's own
`lumina_util.load_lumina_model` from a safetensors file of the bench's weights; the network is
`networks.lora_lumina.create_network` applied to the DiT only (text encoder outputs cached, as its docs
recommend); the step is `LuminaNetworkTrainer.process_batch` (noise, timesteps, forward, loss) followed by the
loop body of `NetworkTrainer.train`: `accelerator.backward`, grad-norm clipping, optimizer and scheduler step.
Arguments come from kohya's own parser, so every option not named here is kohya's default. Imports kohya only
inside `load_kohya`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from ...comfyui.peer_trainlora import PeerError


@dataclass(frozen=True)
class KohyaSetting:
    label: str
    network_dim: int = 16
    network_alpha: float = 16.0
    network_args: tuple[str, ...] = ()  # kohya's --network_args, e.g. ("attn_dim=16",)
    flags: tuple[str, ...] = ()  # further kohya command-line flags


def load_kohya(root: str) -> SimpleNamespace:
    path = Path(root).resolve()
    if not (path / "lumina_train_network.py").is_file():
        raise PeerError(f"{path}: no lumina_train_network.py here. Pass a checkout of kohya-ss/sd-scripts "
                        "(--kohya PATH)")
    sys.path.insert(0, str(path))
    import lumina_train_network as ltn
    from library import lumina_util
    from networks import lora_lumina

    return SimpleNamespace(ltn=ltn, lumina_util=lumina_util, lora_lumina=lora_lumina, root=path)


def kohya_args(k: SimpleNamespace, setting: KohyaSetting, model_file: str, lr: float = 1e-4):
    """kohya's own argument namespace for this run (its parser, its defaults)."""
    argv = ["--pretrained_model_name_or_path", model_file, "--network_module", "networks.lora_lumina",
            "--network_dim", str(setting.network_dim), "--network_alpha", str(setting.network_alpha),
            "--learning_rate", str(lr), "--optimizer_type", "AdamW", "--lr_scheduler", "constant",
            "--timestep_sampling", "nextdit_shift", "--discrete_flow_shift", "6.0", "--model_prediction_type", "raw",
            "--mixed_precision", "bf16", "--gradient_checkpointing", "--cache_latents",
            "--cache_text_encoder_outputs", "--network_train_unet_only", *setting.flags]
    if setting.network_args:
        argv += ["--network_args", *setting.network_args]
    return k.ltn.setup_parser().parse_args(argv)


def _network_kwargs(args) -> dict:
    out = {}
    for item in args.network_args or []:
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


@dataclass
class KohyaStep:
    step: Callable[[], float]
    trainable: int
    modules: int
    keep: list = field(default_factory=list)  # objects that must outlive the step (model, network, optimizer)


def load_dit(k: SimpleNamespace, args):
    """kohya's NextDiT from the file named in its arguments, by kohya's loader (bf16, on the CPU)."""
    return k.lumina_util.load_lumina_model(args.pretrained_model_name_or_path, torch.bfloat16, torch.device("cpu"))


def build_step(k: SimpleNamespace, args, dit: torch.nn.Module, latents: torch.Tensor, cap_feats: torch.Tensor,
               device: torch.device) -> KohyaStep:
    """Network, optimizer and one-step closure over `dit`, set up as NetworkTrainer.train does (DiT only)."""
    from accelerate import Accelerator

    trainer = k.ltn.LuminaNetworkTrainer()
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=device.type != "cuda")
    dit.requires_grad_(False)
    te = torch.nn.Module()  # outputs cached and the text encoder not trained: no LoRA modules there
    network = k.lora_lumina.create_network(1.0, args.network_dim, args.network_alpha, None, [te], dit,
                                           **_network_kwargs(args))
    network.apply_to([te], dit, False, True)
    if args.gradient_checkpointing:
        dit.enable_gradient_checkpointing()
        network.enable_gradient_checkpointing()
    params, _ = network.prepare_optimizer_params_with_multiple_te_lrs(None, None, args.learning_rate)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate)  # kohya's optimizer_type AdamW
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _s: 1.0)  # lr_scheduler constant
    dit.to(accelerator.device, dtype=torch.bfloat16)
    network, optimizer, scheduler = accelerator.prepare(network, optimizer, scheduler)
    dit = accelerator.prepare(dit)
    if args.gradient_checkpointing:
        dit.train()
    accelerator.unwrap_model(network).prepare_grad_etc([te], dit)
    accelerator.unwrap_model(network).on_epoch_start([te], dit)
    scheduler_noise = trainer.get_noise_scheduler(args, accelerator.device)
    b, L = cap_feats.shape[:2]
    batch = {"latents": latents.to(accelerator.device, torch.float32),
             "text_encoder_outputs_list": [cap_feats.to(accelerator.device, torch.bfloat16),
                                           torch.zeros(b, L, dtype=torch.long, device=accelerator.device),
                                           torch.ones(b, L, dtype=torch.long, device=accelerator.device)],
             "loss_weights": torch.ones(b, device=accelerator.device), "captions": [""] * b}

    def step() -> float:
        with accelerator.accumulate(network):
            loss = trainer.process_batch(batch, [te], dit, network, None, scheduler_noise, torch.bfloat16,
                                         torch.bfloat16, accelerator, args, None, None, is_train=True,
                                         train_text_encoder=False, train_unet=True)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm != 0.0:
                accelerator.clip_grad_norm_(accelerator.unwrap_model(network).get_trainable_params(),
                                            args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    unwrapped = accelerator.unwrap_model(network)
    trainable = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
    return KohyaStep(step, trainable, len(unwrapped.unet_loras), [dit, network, optimizer, accelerator])


def kohya_dit(k: SimpleNamespace, config: dict, native: dict[str, torch.Tensor]):
    """kohya's NextDiT over the bench's weights, built as its `load_lumina_model` builds it (on the meta
    device, then `load_state_dict(strict=False, assign=True)`), from memory instead of a file."""
    from library import lumina_models

    with torch.device("meta"):
        dit = lumina_models.NextDiT(
            patch_size=config["patch_size"], in_channels=config["in_channels"], dim=config["hidden_size"],
            n_layers=config["num_layers"], n_refiner_layers=config["num_refiner_layers"],
            n_heads=config["num_attention_heads"], n_kv_heads=config["num_kv_heads"],
            multiple_of=config["multiple_of"], ffn_dim_multiplier=config["ffn_dim_multiplier"],
            norm_eps=config["norm_eps"], qk_norm=True, cap_feat_dim=config["cap_feat_dim"],
            axes_dims=list(config["axes_dim_rope"]), axes_lens=list(config["axes_lens"])).to(torch.bfloat16)
    sd = {key: v.detach().cpu().to(torch.bfloat16) for key, v in native.items()}
    sd.setdefault("norm_final.weight", torch.ones(config["hidden_size"], dtype=torch.bfloat16))
    info = dit.load_state_dict(sd, strict=False, assign=True)
    if info.missing_keys:
        raise PeerError(f"kohya's NextDiT needs weights the bench has not: {info.missing_keys[:5]}")
    return dit


def checkout_version(root: Path) -> str:
    """The checkout's commit (from .git, or a COMMIT file written when it was copied)."""
    for name in ("COMMIT", ".git/HEAD"):
        f = Path(root) / name
        if f.is_file():
            text = f.read_text().strip()
            if text.startswith("ref:"):
                ref = Path(root) / ".git" / text.split(" ", 1)[1]
                return ref.read_text().strip()[:12] if ref.is_file() else text
            return text[:12]
    return "-"
