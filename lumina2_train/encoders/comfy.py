"""ComfyUI's CLIP (Gemma2 or Qwen3-4B) and VAE objects as the library's EncoderProvider. ComfyUI imports inside
functions.

Text, Lumina2 (Gemma2): `clip.tokenize(text, disable_weights=True)` (captions are raw text: no `(word:1.2)`
parsing), BOS + the first max_tokens − 1 tokens (ComfyUI itself never truncates), then ComfyUI's Gemma2 encode,
which returns hidden_states[-2] (layer_idx −2, no final norm) as CONDITIONING does; features are unpadded per
text. The caller formats the prompt (system prompt + " <Prompt Start> " + caption, recipe.format_prompt).
Text, Z-Image (ComfyUI's Qwen3-4B CLIP, CLIPLoader type lumina2 on a Qwen3-4B file): the prompt arrives already in
the chat template (recipe.format_prompt, family "zimage"), so it is tokenized with `llama_template="{}"`
(ComfyUI's ZImageTokenizer would wrap it again, and it never parses weights); no BOS, the first
min(max_tokens, 512) tokens, hidden_states[-2], only the attention-masked tokens.
Latents: `vae.encode` takes (B, H, W, 3) in [0, 1] and returns RAW Flux latents; recipe.latent_in scales them.
"""

from __future__ import annotations

import torch

from .. import recipe
from ..errors import ModelError
from ..storage.fingerprint import tensor_fingerprint

GEMMA2_KEY = "gemma2_2b"  # the tokenizer/encoder name ComfyUI's Lumina2 text encoder uses
QWEN3_KEY = "qwen3_4b"  # ComfyUI's Z-Image text encoder (comfy/text_encoders/z_image.py)
FAMILY_OF_KEY = {GEMMA2_KEY: recipe.LUMINA2, QWEN3_KEY: recipe.ZIMAGE}


def clip_family(clip) -> str:
    """The prompt family of a ComfyUI CLIP: "lumina2" (Gemma2-2B) or "zimage" (Qwen3-4B).

    Raises:
        ModelError: not a CLIP, or a text encoder of another model.
    """
    if not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens"):
        raise ModelError(f"clip: not a ComfyUI CLIP (got {type(clip).__name__}). Connect the CLIP output of "
                         "Load Checkpoint or of Load CLIP with type 'lumina2'")
    keys = sorted(clip.tokenize(""))
    if len(keys) != 1 or keys[0] not in FAMILY_OF_KEY:
        raise ModelError(f"clip: this text encoder is {', '.join(keys) or 'unknown'}, not Gemma2-2B (Lumina2's) or "
                         "Qwen3-4B (Z-Image's). Load gemma_2_2b_fp16.safetensors or qwen_3_4b.safetensors with Load "
                         "CLIP, type 'lumina2', or use the CLIP of a Lumina-Image-2.0 checkpoint")
    return FAMILY_OF_KEY[keys[0]]


def _check_vae(vae) -> None:
    if not hasattr(vae, "encode") or not hasattr(vae, "decode"):
        raise ModelError(f"vae: not a ComfyUI VAE (got {type(vae).__name__}). Connect a Load VAE output")
    channels = getattr(vae, "latent_channels", None)
    ratio = vae.spacial_compression_encode() if hasattr(vae, "spacial_compression_encode") else 8
    if channels != recipe.LATENT_CHANNELS or ratio != 8 or getattr(vae, "latent_dim", 2) != 2:
        raise ModelError(f"vae: this VAE makes {channels}-channel latents at 1/{ratio} scale; Lumina2 needs the "
                         "16-channel Flux VAE (1/8). Load ae.safetensors (Flux) with Load VAE")


def _tensors(obj, out: list[torch.Tensor]) -> None:
    """Every tensor reachable in a patch entry (tuples, lists, dicts, weight adapters' `.weights`)."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _tensors(v, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, out)
    elif hasattr(obj, "weights"):
        _tensors(obj.weights, out)


def patcher_identity(patcher, state: dict[str, torch.Tensor]) -> str:
    """Fingerprint of a model's weights plus the LoRA patches its ModelPatcher would apply (sampled, cheap)."""
    sd = dict(state)
    for key, entries in sorted(getattr(patcher, "patches", {}).items()):
        for i, entry in enumerate(entries):
            found: list[torch.Tensor] = []
            _tensors(entry, found)
            strengths = [v for v in entry if isinstance(v, (int, float))] if isinstance(entry, tuple) else []
            sd[f"patch|{key}|{i}|{strengths}"] = torch.tensor([float(s) for s in strengths] or [0.0])
            sd.update({f"patch|{key}|{i}|{j}": t for j, t in enumerate(found)})
    return tensor_fingerprint(sd)


class ComfyTextEncoder:
    """TextEncoder over a ComfyUI CLIP holding Lumina2's Gemma2 or Z-Image's Qwen3-4B."""

    def __init__(self, clip, family: str = recipe.LUMINA2):
        self.clip = clip
        self.family = family

    def _tokens(self, text: str, max_tokens: int) -> dict:
        if self.family == recipe.ZIMAGE:  # already templated; ZImageTokenizer turns weights off itself
            tokens = self.clip.tokenize(text, llama_template="{}")
            limit = min(max_tokens, recipe.ZIMAGE_MAX_TOKENS)
            return {k: [batch[:limit] for batch in v[:1]] for k, v in tokens.items()}
        try:
            tokens = self.clip.tokenize(text, disable_weights=True)
        except TypeError:  # a ComfyUI without the option: escape the weight syntax instead
            tokens = self.clip.tokenize(text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)"))
        return {k: [batch[:max_tokens] for batch in v[:1]] for k, v in tokens.items()}  # BOS stays first

    def encode(self, texts: list[str], max_tokens: int) -> list[torch.Tensor]:
        """hidden_states[-2] per text: (L_i, D) float32 CPU tensors, L_i ≤ max_tokens, no padding."""
        out = []
        for text in texts:
            res = self.clip.encode_from_tokens(self._tokens(text, max_tokens), return_dict=True)
            cond = res["cond"][0]  # (L, D)
            mask = res.get("attention_mask")
            if mask is not None:
                cond = cond[mask[0].to(cond.device).bool()]
            with torch.inference_mode(False):
                out.append(cond.detach().float().cpu().clone())
        return out


class ComfyLatentEncoder:
    """LatentEncoder over a ComfyUI VAE (Flux AE): pixels in [-1, 1] <-> scaled Lumina2 latents."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 16, H/8, W/8) float32 scaled latents (recipe.latent_in)."""
        image = ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)  # ComfyUI IMAGE layout
        raw = self.vae.encode(image)
        with torch.inference_mode(False):
            return recipe.latent_in(raw.detach().float().cpu().clone())

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, 16, h, w) -> (B, 3, 8h, 8w) float32 pixels in [-1, 1]."""
        image = self.vae.decode(recipe.latent_out(latents.float()))  # (B, H, W, 3) in [0, 1]
        with torch.inference_mode(False):
            return (image.detach().float().cpu().permute(0, 3, 1, 2) * 2.0 - 1.0).contiguous()


class ComfyEncoders:
    """EncoderProvider over ComfyUI CLIP and VAE objects (either may be None when a stage needs only one)."""

    def __init__(self, clip=None, vae=None):
        self.text_family = clip_family(clip) if clip is not None else recipe.LUMINA2
        if vae is not None:
            _check_vae(vae)
        self.clip, self.vae = clip, vae
        name = "comfy-gemma2:" if self.text_family == recipe.LUMINA2 else "comfy-qwen3:"
        self.text_identity = name + patcher_identity(clip.patcher, clip.get_sd()) if clip is not None else ""
        self.vae_identity = "comfy-vae:" + tensor_fingerprint(vae.get_sd()) if vae is not None else ""

    def text_encoder(self) -> ComfyTextEncoder:
        if self.clip is None:
            raise ModelError("clip: no CLIP connected, but captions need encoding. Connect Lumina2's CLIP (Gemma2) "
                             "or Z-Image's (Qwen3-4B)")
        return ComfyTextEncoder(self.clip, self.text_family)

    def latent_encoder(self) -> ComfyLatentEncoder:
        if self.vae is None:
            raise ModelError("vae: no VAE connected, but images need encoding. Connect the Flux VAE (ae.safetensors)")
        return ComfyLatentEncoder(self.vae)

    def release(self) -> None:
        """Let ComfyUI unload our CLIP and VAE from its device (they stay usable: ComfyUI reloads on use)."""
        import comfy.model_management as mm

        ours = [p for p in (getattr(self.clip, "patcher", None), getattr(self.vae, "patcher", None)) if p is not None]
        loaded = getattr(mm, "current_loaded_models", None)
        if ours and loaded is not None and hasattr(mm, "free_memory"):
            keep = [lm for lm in loaded if not any(lm.model is p for p in ours)]
            for device in {p.load_device for p in ours}:
                mm.free_memory(1e30, device, keep_loaded=keep)
        mm.soft_empty_cache()


__all__ = ["ComfyEncoders", "ComfyLatentEncoder", "ComfyTextEncoder", "clip_family", "patcher_identity"]
