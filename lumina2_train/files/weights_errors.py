"""Errors about weight files, worded the same at every load site: `<field>: <file> <problem> (<detail>). <fix>.`

The base model, the text encoder, its tokenizer, the VAE, `adapter.init_from`, `adapter.training_adapter` and the
CLIP scorer each load inside `naming(field, path)`: a failure of safetensors, torch, transformers or diffusers (a
truncated or damaged file, another kind of file, a folder where a file belongs, missing weights, other shapes)
becomes the project's error naming the setting, the file, what is wrong and the fix; one of our own errors that
does not name a setting yet gets the field (and the file) in front. Out-of-memory and interrupts keep their types.
No ComfyUI imports.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..errors import FormatError, Lumina2TrainError, ModelError

AGAIN = "download or export it again if it is damaged"
FIXES = {
    "model.transformer": "Give a Lumina2 diffusers folder (with transformer/) or a ComfyUI diffusion-model "
                         f".safetensors file; {AGAIN}",
    "model.text_encoder": "Give the Gemma2-2B text encoder: ComfyUI's gemma_2_2b file, the all-in-one "
                          f"lumina_2.safetensors or a Hugging Face / diffusers text_encoder folder; {AGAIN}",
    "model.vae": "Give the 16-channel Flux VAE: ae.safetensors, the all-in-one lumina_2.safetensors or a "
                 f"diffusers vae folder; {AGAIN}",
    "model.tokenizer": f"Give the Gemma2 tokenizer folder (tokenizer.json or tokenizer.model); {AGAIN}",
    "adapter.init_from": "Give a LoRA .safetensors file written for this Lumina2 model (by this pack, ComfyUI, "
                         f"kohya or diffusers), with adapter.rank set to its rank; {AGAIN}",
    "adapter.training_adapter": "Give a LoRA .safetensors file written for this model (a de-distillation LoRA for "
                                f"Z-Image-Turbo, in the ComfyUI, kohya or diffusers layout); {AGAIN}",
    "validation.clip_model": f"Give a local Hugging Face CLIP model folder; {AGAIN}",
}
_NAMES_A_FIELD = re.compile(r"^[a-z_]+(\.[a-z_0-9\[\]]+)+[ :']")  # 'model.vae: ...', "adapter.blocks '0' ..."
_LOAD_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, NotImplementedError, KeyError, EOFError, TypeError,
                pickle.UnpicklingError)


def problem(e: BaseException) -> str:
    """What is wrong with the file, in words, from the exception a loader raised."""
    text = str(e)
    if isinstance(e, IsADirectoryError):
        return "is a folder where a file is expected"
    if isinstance(e, NotADirectoryError):
        return "is a file where a folder is expected"
    if isinstance(e, json.JSONDecodeError):
        return "has a JSON file (config or tokenizer) that cannot be read: damaged, or not JSON"
    if isinstance(e, SafetensorError) or any(s in text for s in (
            "deserializing header", "incomplete metadata", "header too large", "Unable to load weights",
            "invalid load key", "safetensors")):
        return "is not a readable safetensors file (truncated, corrupt, or another kind of file)"
    if "size mismatch" in text or "shape" in text.lower():
        return "holds weights whose shapes do not fit the model"
    if "missing" in text.lower() or isinstance(e, KeyError):
        return "lacks weights the model needs"
    if isinstance(e, FileNotFoundError):
        return "lacks a file the model needs"
    return "cannot be loaded"


def _detail(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ".join(lines[:2]) or type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


@contextlib.contextmanager
def naming(field: str, path: str | Path, error: type[Lumina2TrainError] = ModelError) -> Iterator[None]:
    """Run a load of `path` for setting `field`; any failure is raised as `error` (or, for our own errors, their
    own type) whose message starts with the field and names the file.

    Raises:
        ModelError / FormatError: naming `field`, the file, the problem and the fix (FIXES).
    """
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except Lumina2TrainError as e:
        text = str(e)
        if not isinstance(e, (ModelError, FormatError)) or str(path) in text and _NAMES_A_FIELD.match(text):
            raise
        if text.startswith(f"{field}: "):  # names the field, not the file
            raise type(e)(f"{field}: {path}: {text[len(field) + 2:]}") from None
        if _NAMES_A_FIELD.match(text):  # another setting's own message (model.tokenizer inside a text load)
            raise
        raise type(e)(f"{field}: {'' if str(path) in text else f'{path}: '}{text}") from None
    except _LOAD_ERRORS as e:
        raise error(f"{field}: {path} {problem(e)} ({_detail(e)}). {FIXES[field]}") from None


def require_all_weights(field: str, path: str | Path, info: dict) -> None:
    """ModelError when transformers/diffusers' loading info shows weights that were missing from the files (they
    would silently stay randomly initialised) or had other shapes."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        found = "; ".join(s for s in (f"missing {missing[:3]} ({len(missing)} in all)" if missing else "",
                                      f"other shapes {mismatched[:3]}" if mismatched else "") if s)
        raise ModelError(f"{field}: {path} lacks weights the model needs ({found}). {FIXES[field]}")
