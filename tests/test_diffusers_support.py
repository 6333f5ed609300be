"""Which of our files diffusers loads (issue 6: "...and in diffusers where diffusers supports the format").

- Plain LoRA: yes (tests/files/test_formats.py, the same native-named file through Lumina2Pipeline.load_lora_weights).
- Full fine-tune: yes, the run folder's diffusers `transformer/` (tests/files/test_fullmodel.py).
- LoHa, LoKr, DoRA: no. diffusers' Lumina2 LoRA converter knows only lora_A/lora_B pairs (a LoHa or LoKr file
  fails inside it) and drops `dora_scale` with a warning (a DoRA file then loads as a plain LoRA: wrong output).
  So we refuse to write them in the 'diffusers' format, with a FormatError that says which format holds them.
Checked with diffusers 0.42; if a later diffusers learns these formats, the tests below say so.
"""

import pytest
import torch

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones.diffusers import DiffusersBackbone
from lumina2_train.config import TARGET_PRESETS, AdapterConfig
from lumina2_train.errors import FormatError
from lumina2_train.files.formats import save_adapters
from lumina2_train.tiny import NATIVE_WIDTH_DIT, make_tiny_transformer

from builders import diffusers_velocity, lumina2_pipeline, velocity_inputs

KINDS = {
    "loha": AdapterConfig(kind="loha", rank=4, alpha=2.0, targets=TARGET_PRESETS["all"]),
    "lokr": AdapterConfig(kind="lokr", rank=4, alpha=8.0, targets=TARGET_PRESETS["all"]),
    "dora": AdapterConfig(kind="lora", use_dora=True, rank=4, alpha=8.0, targets=TARGET_PRESETS["all"]),
}


def _trained(backbone, kind: str):
    adapters = build_adapters(backbone, KINDS[kind])
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return adapters


def _inputs():
    return velocity_inputs(1, 5, sigmas=[0.6], seed=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_diffusers_format_is_refused_with_a_clear_error(tiny_backbone, tmp_path, kind):
    adapters = _trained(tiny_backbone, kind)
    with pytest.raises(FormatError, match="only in the 'comfyui' format"):
        save_adapters(adapters, tmp_path / "x.safetensors", fmt="diffusers", arch=tiny_backbone.arch)
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_diffusers_cannot_load_loha_or_lokr_files(tmp_path, kind):
    model = make_tiny_transformer(0, NATIVE_WIDTH_DIT, std=0.02)
    backbone = DiffusersBackbone.from_model(model)
    path = save_adapters(_trained(backbone, kind), tmp_path / f"{kind}.safetensors", dtype="fp32", arch=backbone.arch)
    with pytest.raises((KeyError, ValueError)):  # diffusers 0.42: KeyError '<module>.lora_A.weight' in its converter
        lumina2_pipeline(model).load_lora_weights(str(path))


@pytest.mark.slow
def test_diffusers_drops_dora_scale_so_a_dora_file_loads_as_plain_lora(tmp_path):
    model = make_tiny_transformer(0, NATIVE_WIDTH_DIT, std=0.02)
    backbone = DiffusersBackbone.from_model(model)
    dora = _trained(backbone, "dora")
    path = save_adapters(dora, tmp_path / "dora.safetensors", dtype="fp32", arch=backbone.arch)
    plain = build_adapters(backbone, AdapterConfig(rank=4, alpha=8.0, targets=TARGET_PRESETS["all"]))
    with torch.no_grad():
        for name, mod in plain.items():
            mod.up.copy_(dora[name].up)
            mod.down.copy_(dora[name].down)
    x, sigma, feats = _inputs()
    with torch.no_grad():
        ours = backbone.velocity(x, sigma, feats, None, dora.as_dict())
        directions_only = backbone.velocity(x, sigma, feats, None, plain.as_dict())
    pipe = lumina2_pipeline(model)
    pipe.load_lora_weights(str(path))
    theirs = diffusers_velocity(pipe, x, sigma, feats)
    torch.testing.assert_close(theirs, directions_only, atol=1e-4, rtol=1e-4)  # the magnitude was ignored
    assert (theirs - ours).abs().max() > 1e-2  # so the DoRA's output is not reproduced
