"""Every error about a weights file or adapter.init_from names the setting, the file, the problem and the fix:
truncated or damaged safetensors, another kind of file, a folder where a file belongs (and the reverse), missing
weights and other shapes, for each of model.transformer, model.text_encoder, model.tokenizer, model.vae and
adapter.init_from. On tiny real files written here (diffusers/transformers folders and ComfyUI single files).

Fails before the fix: a truncated diffusers or transformers folder raised OSError/SafetensorError, wrong shapes
a bare RuntimeError, a folder missing a weight NotImplementedError (diffusers) or nothing at all (transformers
left the weight random), a corrupt tokenizer a JSONDecodeError, and no message named the setting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lumina2_train.errors import ConfigError, Lumina2TrainError

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lumina2_train.tiny import write_tiny_diffusers
    from lumina2_train.tiny.comfy_layout import write_comfy_tiny_models

    base = tmp_path_factory.mktemp("weights")
    return {"folders": write_tiny_diffusers(base / "diffusers"), "files": write_comfy_tiny_models(base / "comfy")}


# ---------------------------------------------------------------- damaged copies of real files


def truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def png(dst: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(dst, format="PNG")  # another kind of file under a .safetensors name
    return dst


def without_keys(src: Path, dst: Path, pick=lambda k: True, n: int = 2) -> Path:
    sd = load_file(str(src))
    for k in sorted(k for k in sd if pick(k))[:n]:
        del sd[k]
    save_file(sd, str(dst))
    return dst


def reshaped(src: Path, dst: Path, pick=lambda k: True) -> Path:
    sd = load_file(str(src))
    k = sorted(k for k in sd if sd[k].ndim == 2 and pick(k))[0]
    sd[k] = torch.ones(sd[k].shape[0] + 1, sd[k].shape[1], dtype=sd[k].dtype)
    save_file(sd, str(dst))
    return dst


def folder_with(src: Path, dst: Path, name: str, damage) -> Path:
    shutil.copytree(src, dst)
    damage(src / name, dst / name)
    return dst


def bad_json(src: Path, dst: Path) -> Path:
    dst.write_text("{not json", encoding="utf-8")
    return dst


def layer0(k: str) -> bool:
    return "layers.0." in k


def vae_block(k: str) -> bool:
    return "mid" in k and k.endswith("weight")


# ---------------------------------------------------------------- the loads


def load_transformer(path: Path) -> None:
    from lumina2_train.files.loading import load_backbone

    load_backbone(path, "fp32")


def load_encoders(tiny, text_encoder=None, vae=None, tokenizer="") -> None:
    from lumina2_train.encoders.hf import HFEncoders

    enc = HFEncoders.from_paths(str(text_encoder or tiny["folders"]["text_encoder"]), str(vae or tiny["files"]["vae"]),
                                str(tokenizer or (tiny["folders"]["tokenizer"] if text_encoder is None
                                                  or Path(text_encoder).is_dir() else "")))
    enc.text_encoder()
    enc.latent_encoder()


def damaged(file: Path, folder: Path, work: Path, stem: str, weights: str, pick) -> dict:
    """The ways one component's weights can be broken, as a single file and as a folder (`weights`: the folder's
    weights file; `pick`: the keys to drop or reshape)."""
    out = work / f"{stem}.safetensors"
    return {
        "file truncated": lambda: truncated(file, out),
        "file is a PNG": lambda: png(out),
        "file misses weights": lambda: without_keys(file, out, pick),
        "file has other shapes": lambda: reshaped(file, out, pick),
        "folder weights truncated": lambda: folder_with(folder, work / stem, weights, truncated),
        "folder misses a weight": lambda: folder_with(folder, work / stem, weights,
                                                      lambda s, o: without_keys(s, o, n=1)),
        "folder has other shapes": lambda: folder_with(folder, work / stem, weights, lambda s, o: reshaped(s, o, pick)),
    }


def transformer_cases(t, w):
    return {**damaged(t["files"]["diffusion_model"], t["folders"]["transformer"], w, "t", WEIGHTS, layer0),
            "file is text": lambda: (w / "t.txt").write_text("hello") and w / "t.txt",
            "folder without config": lambda: (w / "empty").mkdir() or w / "empty",
            "folder config damaged": lambda: folder_with(t["folders"]["transformer"], w / "t", "config.json",
                                                         bad_json)}


def text_cases(t, w):
    return damaged(t["files"]["text_encoder"], t["folders"]["text_encoder"], w, "e", "model.safetensors", layer0)


def vae_cases(t, w):
    return damaged(t["files"]["vae"], t["folders"]["vae"], w, "v", WEIGHTS, vae_block)


def tokenizer_cases(t, w):
    d = t["folders"]["tokenizer"]
    return {"tokenizer.json damaged": lambda: folder_with(d, w / "k", "tokenizer.json", bad_json),
            "a file instead of the folder": lambda: d / "tokenizer.json"}


CASES = {"model.transformer": transformer_cases, "model.text_encoder": text_cases, "model.vae": vae_cases,
         "model.tokenizer": tokenizer_cases}
LOADS = {"model.transformer": lambda t, p: load_transformer(p),
         "model.text_encoder": lambda t, p: load_encoders(t, text_encoder=p),
         "model.vae": lambda t, p: load_encoders(t, vae=p),
         "model.tokenizer": lambda t, p: load_encoders(t, tokenizer=p)}
_ANY = {k: Path(k) for k in ("diffusion_model", "text_encoder", "vae", "transformer", "tokenizer")}
IDS = [(field, case) for field, make in CASES.items() for case in make({"files": _ANY, "folders": _ANY}, Path())]


def assert_names_field_file_and_fix(msg: str, field: str, path: Path) -> None:
    assert msg.startswith(f"{field}: "), msg
    assert str(path) in msg, msg
    assert any(fix in msg for fix in ("Give ", "download or export it again", "Check ")), msg
    assert "Traceback" not in msg and "\n" not in msg, msg



@pytest.mark.slow
@pytest.mark.parametrize(("field", "case"), IDS, ids=[f"{f}-{c}" for f, c in IDS])
def test_bad_weights_name_the_field_the_file_and_the_fix(tiny, tmp_path, field, case):
    path = CASES[field](tiny, tmp_path)[case]()
    with pytest.raises(Lumina2TrainError) as e:
        LOADS[field](tiny, path)
    assert_names_field_file_and_fix(str(e.value), field, path)


# ---------------------------------------------------------------- adapter.init_from


@pytest.fixture
def lora_file(tiny_backbone, tmp_path):
    from lumina2_train.adapters import build_adapters
    from lumina2_train.config import AdapterConfig
    from lumina2_train.files.formats import save_adapters

    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, alpha=4.0, targets=("attention",)))
    path = tmp_path / "good.safetensors"
    save_adapters(adapters, path, dtype="fp32", arch=tiny_backbone.arch)
    return path


INIT_CASES = {
    "truncated": lambda good, w: truncated(good, w / "i.safetensors"),
    "a PNG": lambda good, w: png(w / "i.safetensors"),
    "text": lambda good, w: (w / "i.txt").write_text("hi") and w / "i.txt",
    "a folder": lambda good, w: (w / "loras").mkdir() or w / "loras",
    "halves missing": lambda good, w: without_keys(good, w / "i.safetensors", lambda k: "lora_B" in k, n=1),
    "other shapes": lambda good, w: reshaped(good, w / "i.safetensors", lambda k: "lora_A" in k),
}


@pytest.mark.parametrize("case", list(INIT_CASES))
def test_bad_init_from_names_the_field_the_file_and_the_fix(tiny_backbone, lora_file, tmp_path, case):
    from lumina2_train.adapters import build_adapters
    from lumina2_train.config import AdapterConfig
    from lumina2_train.files.init_from import load_init_from

    path = INIT_CASES[case](lora_file, tmp_path)
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, alpha=4.0, targets=("attention",)))
    with pytest.raises(Lumina2TrainError) as e:
        load_init_from(adapters, tiny_backbone, path)
    assert_names_field_file_and_fix(str(e.value), "adapter.init_from", path)
    load_init_from(adapters, tiny_backbone, lora_file)  # the good file loads


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated", "a PNG", "a folder"])
def test_bad_init_from_is_found_before_any_model_loads(lora_file, tmp_path, case):
    """run_training's first check reads only the header: no encoder or DiT loads for a file it cannot use."""
    from lumina2_train.pipeline import _lora_file_problems

    path = INIT_CASES[case](lora_file, tmp_path)
    problems = _lora_file_problems("adapter.init_from", str(path))
    assert len(problems) == 1 and problems[0].startswith(f"adapter.init_from '{path}' "), problems
    assert "Give " in problems[0] or "give " in problems[0], problems
    assert not _lora_file_problems("adapter.init_from", str(lora_file))
    with pytest.raises(ConfigError, match="adapter.init_from"):
        raise ConfigError(problems)
