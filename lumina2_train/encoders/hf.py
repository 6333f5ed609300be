"""Hugging Face encoders from local files: transformers Gemma2 (Lumina2) or Qwen3 (Z-Image, encoders/qwen3.py) +
tokenizer, diffusers AutoencoderKL (Flux AE).

Models load lazily (only when a cache misses) and are dropped by `release()`. Identities are content
hashes of the weight/config/tokenizer files, computed without loading a model. No ComfyUI imports.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..config.choices import TEXT_NUMERICS
from ..errors import ModelError
from ..files.weights_errors import naming, require_all_weights
from ..recipe import LATENT_CHANNELS, latent_in, latent_out
from ..storage.fingerprint import json_fingerprint, tensor_fingerprint
from . import EncoderProvider
from .files import check_text_encoder_file, check_vae_file, text_encoder_file_dtype
from .qwen3 import QWEN3_MODEL_TYPE, HFQwen3TextEncoder, load_qwen3

log = logging.getLogger(__name__)
# How the Gemma2 arithmetic is done (docs/recipe.md "Text-encoder numerics"): "comfyui" reproduces the
# CONDITIONING ComfyUI's own Gemma2 gives at inference, "transformers" is transformers' Gemma2 as configured.
_DTYPE_NAMES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".pt", ".pth", ".txt")


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Content hash of one file; memoised per (path, size, mtime) so a re-run does not re-read 5 GB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def file_identity(path: Path) -> str:
    """The content hash of one weights file (memoised per path, size and mtime)."""
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _load_text_file(path: Path, device, dtype):
    from .files import load_text_encoder_file

    log.info("loading text encoder %s", path)
    return load_text_encoder_file(path, device, dtype)


def _load_vae_file(path: Path, device, dtype):
    from .files import load_vae_file

    log.info("loading VAE %s", path)
    with naming("model.vae", path):
        return load_vae_file(path, device, dtype)


def use_comfyui_numerics(model, stored_dtype: torch.dtype) -> None:
    """Make a transformers Gemma2Model compute what ComfyUI's own Gemma2 computes.

    ComfyUI keeps the weights in the file's dtype (`llama_detect`: the dtype of `model.norm.weight`) and runs
    the layers in float32 (embeddings are requested as float32; manual_cast ops cast each weight up). Two
    things differ from transformers: it has no attention-logit soft-capping (transformers: tanh(x/50)·50), and
    a Gemma norm's scale 1 + w is added in the stored dtype, so it is rounded to fp16/bf16. Both are applied
    here, in place: soft-capping off, and every norm weight replaced by w' with 1 + w' equal to ComfyUI's
    rounded scale (exact in float32). Weights are not rounded otherwise: a model read from the same file holds
    the same values.
    """
    disable_softcapping(model)
    round_norm_scales(model, stored_dtype)


def disable_softcapping(model) -> None:
    """No attention-logit soft-capping in a transformers Gemma2Model (in place), as in ComfyUI's Gemma2."""
    model.config.attn_logit_softcapping = None
    for module in model.modules():
        if hasattr(module, "attn_logit_softcapping"):  # read once at construction by each attention layer
            module.attn_logit_softcapping = None


def round_norm_scales(model, stored_dtype: torch.dtype) -> None:
    """Norm weights w -> w' with 1 + w' = (w + 1) rounded to `stored_dtype` (ComfyUI's RMSNorm adds 1.0 to
    the weight in the dtype it stores it in); in place, nothing changes for float32."""
    if stored_dtype == torch.float32:
        return
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_((p.detach().to(stored_dtype) + 1.0).float() - 1.0)


def _check_numerics(numerics: str) -> None:
    if numerics not in TEXT_NUMERICS:
        raise ModelError(f"model.text_encoder_numerics: unknown setting ({numerics!r}). Use one of "
                         f"{', '.join(TEXT_NUMERICS)}.")


def folder_dtype(folder: Path) -> torch.dtype:
    """The dtype a Hugging Face folder's config says its weights are stored in (float32 when it says none)."""
    config = _read_config(folder, "model.text_encoder")
    return _DTYPE_NAMES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), torch.float32)


def folder_identity(folder: Path) -> str:
    """A hash of the names and bytes of a model folder's weight, config and tokenizer files."""
    parts = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in _HASHED_SUFFIXES and not p.name.startswith("."):
            st = p.stat()
            parts.append((p.name, _file_sha256(str(p.resolve()), st.st_size, st.st_mtime_ns)))
    return json_fingerprint(parts)


class HFTextEncoder:
    """Gemma2 features: hidden_states[-2] (penultimate layer, no final norm), BOS + text, right padding."""

    family = "lumina2"

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", numerics: str = "comfyui",
                 stored_dtype: torch.dtype = torch.float32):
        if tokenizer.bos_token_id is None:
            raise ModelError("tokenizer: it has no BOS token (got bos_token None). Use the Gemma2 tokenizer.")
        _check_numerics(numerics)
        if numerics == "comfyui":
            use_comfyui_numerics(model, stored_dtype)
        self.numerics = numerics
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    def tokenize(self, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> input_ids (B, L) and attention_mask (B, L): BOS + tokens, cut at max_tokens, padded right."""
        bos = self.tokenizer.bos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        rows = [([bos] + list(r))[:max_tokens] for r in rows]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        return ids, mask

    def encode(self, texts: list[str], max_tokens: int) -> list[torch.Tensor]:
        """Per text an unpadded (L_i, D) float32 CPU tensor."""
        ids, mask = self.tokenize(texts, max_tokens)
        with torch.no_grad():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             output_hidden_states=True, use_cache=False)
        feats = out.hidden_states[-2]  # (B, L, D)
        return [feats[i, :n].float().cpu().clone() for i, n in enumerate(mask.sum(1).tolist())]


class HFLatentEncoder:
    """Flux AE: pixels in [-1, 1] <-> latents in the scaled space (posterior mean, deterministic)."""

    def __init__(self, vae, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.vae = vae
        self.device = torch.device(device)
        self.dtype = dtype

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            raw = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist.mean  # (B, 16, H/8, W/8)
        return latent_in(raw.float()).cpu()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pixels = self.vae.decode(latent_out(latents.float()).to(self.device, self.dtype)).sample
        return pixels.float().clamp(-1.0, 1.0).cpu()


class HFEncoders(EncoderProvider):
    """An EncoderProvider over Hugging Face models; each model loads on first use and `release()` drops it."""

    def __init__(self, *, load_text: Callable[[], HFTextEncoder], load_vae: Callable[[], HFLatentEncoder],
                 text_identity: str, vae_identity: str, text_family: str = "lumina2"):
        self._load_text, self._load_vae = load_text, load_vae
        self._text: HFTextEncoder | HFQwen3TextEncoder | None = None
        self.text_family = text_family  # whose prompt format the text encoder takes (recipe.PROMPT_FAMILIES)
        self._vae: HFLatentEncoder | None = None
        self.text_identity = text_identity
        self.vae_identity = vae_identity
        self.loads = {"text": 0, "vae": 0}  # how often each model was loaded (tests, logs)

    @classmethod
    def from_paths(cls, text_encoder: str, vae: str, tokenizer: str = "", device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, numerics: str = "comfyui") -> HFEncoders:
        """Local folders: a HF Gemma2 folder or diffusers `text_encoder/` (or a pipeline root holding
        text_encoder/ + tokenizer/ + vae/), a tokenizer folder (default: next to the text encoder), and a
        diffusers `vae/` folder; or ComfyUI's single files (text encoder, ae.safetensors, the all-in-one
        checkpoint; encoders/files.py). Checks the configs and hashes the files; loads nothing yet.
        `numerics` (TEXT_NUMERICS) is part of the text identity, so caches of the two settings never mix.

        Raises:
            ModelError: a path is missing, is a single file, or holds the wrong kind of model.
        """
        text_identity, load_text = text_source(text_encoder, tokenizer, device, dtype, numerics)
        if Path(os.path.expanduser(vae or "")).is_file():
            vae_file = Path(os.path.expanduser(vae))
            with naming("model.vae", vae_file):
                check_vae_file(vae_file)  # header only: a wrong file fails before anything loads
            vae_identity = json_fingerprint({"vae_file": file_identity(vae_file), "dtype": str(dtype)})
            load_vae = lambda: HFLatentEncoder(_load_vae_file(vae_file, device, dtype), device, dtype)  # noqa: E731
        else:
            vae_dir = resolve_vae_path(vae)
            vae_identity = json_fingerprint({"vae": folder_identity(vae_dir), "dtype": str(dtype)})
            load_vae = lambda: _load_vae(vae_dir, device, dtype)  # noqa: E731
        return cls(load_text=load_text, load_vae=load_vae, text_identity=text_identity, vae_identity=vae_identity,
                   text_family=prompt_family(text_encoder, tokenizer))

    @classmethod
    def from_models(cls, text_model, tokenizer, vae, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, numerics: str = "comfyui") -> HFEncoders:
        """Already-built models (the demo, tests). Identities hash the weights and the tokenizer vocabulary.
        With numerics "comfyui" the text model is changed in place when it is first used (use_comfyui_numerics)."""
        _check_numerics(numerics)
        if text_model.config.model_type == QWEN3_MODEL_TYPE:
            return cls._from_qwen3_model(text_model, tokenizer, vae, device, dtype, numerics)
        stored = next(text_model.parameters()).dtype
        text_identity = json_fingerprint({"gemma2": tensor_fingerprint(text_model.state_dict()),
                                          "tokenizer": json_fingerprint(sorted(tokenizer.get_vocab().items())),
                                          "dtype": str(dtype), "numerics": numerics})
        vae_identity = json_fingerprint({"vae": tensor_fingerprint(vae.state_dict()), "dtype": str(dtype)})
        return cls(load_text=lambda: HFTextEncoder(text_model.to(device, dtype).eval(), tokenizer, device, numerics,
                                                   stored),
                   load_vae=lambda: HFLatentEncoder(vae.to(device, dtype).eval(), device, dtype),
                   text_identity=text_identity, vae_identity=vae_identity)

    @classmethod
    def _from_qwen3_model(cls, text_model, tokenizer, vae, device, dtype, numerics) -> HFEncoders:
        text_identity = json_fingerprint({"qwen3": tensor_fingerprint(text_model.state_dict()),
                                          "tokenizer": json_fingerprint(sorted(tokenizer.get_vocab().items())),
                                          "dtype": str(dtype), "numerics": numerics})
        vae_identity = json_fingerprint({"vae": tensor_fingerprint(vae.state_dict()), "dtype": str(dtype)})
        return cls(load_text=lambda: HFQwen3TextEncoder(text_model.to(device, dtype).eval(), tokenizer, device),
                   load_vae=lambda: HFLatentEncoder(vae.to(device, dtype).eval(), device, dtype),
                   text_identity=text_identity, vae_identity=vae_identity, text_family="zimage")

    def text_encoder(self) -> HFTextEncoder | HFQwen3TextEncoder:
        if self._text is None:
            self._text = self._load_text()
            self.loads["text"] += 1
        return self._text

    def latent_encoder(self) -> HFLatentEncoder:
        if self._vae is None:
            self._vae = self._load_vae()
            self.loads["vae"] += 1
        return self._vae

    def release(self) -> None:
        if self._text is None and self._vae is None:
            return
        self._text = self._vae = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- paths and loading


def text_source(text_encoder: str, tokenizer: str, device, dtype: torch.dtype,
                numerics: str) -> tuple[str, Callable[[], HFTextEncoder | HFQwen3TextEncoder]]:
    """(text identity, loader) for a ComfyUI text-encoder file (Gemma2) or a Hugging Face folder (Gemma2 or
    Qwen3); checks, loads nothing."""
    _check_numerics(numerics)
    if Path(os.path.expanduser(text_encoder or "")).is_file():  # ComfyUI's file (encoders/files.py)
        te_file = Path(os.path.expanduser(text_encoder))
        with naming("model.text_encoder", te_file):
            check_text_encoder_file(te_file)  # header only: a wrong file fails before anything loads
        identity = json_fingerprint({"gemma2_file": file_identity(te_file), "dtype": str(dtype),
                                     "numerics": numerics})

        def load() -> HFTextEncoder:
            with naming("model.text_encoder", te_file):
                model, tok = _load_text_file(te_file, device, dtype)
                return HFTextEncoder(model, tok, device, numerics, text_encoder_file_dtype(te_file))
        return identity, load
    te_dir, tok_dir = resolve_text_paths(text_encoder, tokenizer)
    if text_model_type(te_dir) == QWEN3_MODEL_TYPE:  # Z-Image; numerics only tell the two caches apart
        identity = json_fingerprint({"qwen3": folder_identity(te_dir), "tokenizer": folder_identity(tok_dir),
                                     "dtype": str(dtype), "numerics": numerics})
        return identity, lambda: _load_qwen3(te_dir, tok_dir, device, dtype)
    identity = json_fingerprint({"gemma2": folder_identity(te_dir), "tokenizer": folder_identity(tok_dir),
                                 "dtype": str(dtype), "numerics": numerics})
    return identity, lambda: _load_text(te_dir, tok_dir, device, dtype, numerics)


def prompt_family(text_encoder: str, tokenizer: str = "") -> str:
    """Whose prompt format a text encoder takes: "zimage" for a Qwen3 folder, else "lumina2" (Gemma2)."""
    if Path(os.path.expanduser(text_encoder or "")).is_file():
        return "lumina2"  # ComfyUI's single files are read as Gemma2 (encoders/files.py)
    te_dir, _ = resolve_text_paths(text_encoder, tokenizer)
    return "zimage" if text_model_type(te_dir) == QWEN3_MODEL_TYPE else "lumina2"


def _folder(value: str, field: str, what: str) -> Path:
    path = Path(os.path.expanduser(value)) if value else None
    if path is None or not path.exists():
        raise ModelError(f"{field}: folder not found ('{value}'). Give the {what} folder.")
    if not path.is_dir():
        raise ModelError(f"{field}: {path} is a file where a folder is expected. Give the {what} folder.")
    return path


def _read_config(folder: Path, field: str) -> dict:
    try:
        return json.loads((folder / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{field}: no readable config.json in {folder} ({e}). Give a Hugging Face model "
                         "folder.") from None


def text_model_type(te_dir: Path) -> str | None:
    """config.json's model_type of a text-encoder folder."""
    return _read_config(te_dir, "model.text_encoder").get("model_type")


def resolve_text_paths(text_encoder: str, tokenizer: str = "") -> tuple[Path, Path]:
    """(text encoder folder, tokenizer folder); checks config.json says Gemma2 (Lumina2) or Qwen3 (Z-Image)."""
    te = _folder(text_encoder, "model.text_encoder", "Gemma2 (diffusers text_encoder/ or Hugging Face)")
    root = te if (te / "text_encoder").is_dir() else None
    te = te / "text_encoder" if root else te
    model_type = text_model_type(te)
    if model_type not in ("gemma2", QWEN3_MODEL_TYPE):
        raise ModelError(f"model.text_encoder: {te} holds a '{model_type}' model, not Gemma2 or Qwen3 (config.json "
                         "model_type). Lumina2 uses Gemma2-2B, Z-Image Qwen3-4B; give one of those folders.")
    if tokenizer:
        return te, _folder(tokenizer, "model.tokenizer", "tokenizer")
    for candidate in ([root / "tokenizer"] if root else []) + [te, te.parent / "tokenizer"]:
        if any((candidate / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
            return te, candidate
    raise ModelError(f"model.tokenizer: no tokenizer next to {te} (no tokenizer.json or tokenizer.model there or "
                     "in ../tokenizer). Give the tokenizer folder.")


def resolve_vae_path(vae: str) -> Path:
    """The diffusers vae folder; checks it is a 16-channel AutoencoderKL."""
    folder = _folder(vae, "model.vae", "diffusers vae/")
    folder = folder / "vae" if (folder / "vae").is_dir() else folder
    config = _read_config(folder, "model.vae")
    channels = config.get("latent_channels")
    if config.get("_class_name") != "AutoencoderKL" or channels != LATENT_CHANNELS:
        raise ModelError(f"model.vae: {folder} is a {config.get('_class_name')} with {channels} latent channels. "
                         f"Lumina2 needs the {LATENT_CHANNELS}-channel Flux AutoencoderKL (ae / FLUX.1 vae).")
    return folder


def _load_text(te_dir: Path, tok_dir: Path, device, dtype, numerics: str) -> HFTextEncoder:
    import transformers
    from packaging.version import Version
    from transformers import AutoModel, AutoTokenizer

    log.info("loading text encoder %s", te_dir)
    kw = {"dtype": dtype} if Version(transformers.__version__) >= Version("4.56") else {"torch_dtype": dtype}
    with naming("model.tokenizer", tok_dir):
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    with naming("model.text_encoder", te_dir):
        model, info = AutoModel.from_pretrained(str(te_dir), local_files_only=True, output_loading_info=True, **kw)
        stored = folder_dtype(te_dir)
    require_all_weights("model.text_encoder", te_dir, info)  # transformers would leave them random
    return HFTextEncoder(model.to(device).eval(), tokenizer, device, numerics, stored)


def _load_qwen3(te_dir: Path, tok_dir: Path, device, dtype) -> HFQwen3TextEncoder:
    log.info("loading text encoder %s", te_dir)
    return load_qwen3(te_dir, tok_dir, device, dtype)


def _load_vae(vae_dir: Path, device, dtype) -> HFLatentEncoder:
    from diffusers import AutoencoderKL

    log.info("loading VAE %s", vae_dir)
    with naming("model.vae", vae_dir):
        vae, info = AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=dtype, local_files_only=True,
                                                  output_loading_info=True)
    require_all_weights("model.vae", vae_dir, info)  # diffusers would leave them uninitialised
    return HFLatentEncoder(vae.to(device).eval(), device, dtype)
