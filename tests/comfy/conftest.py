"""Fixtures that import a real ComfyUI in this process (CPU) and load the tiny ComfyUI-layout models.

ComfyUI is found through COMFYUI_PATH, or because this pack sits in a ComfyUI `custom_nodes/` folder; without
one, or when this Python cannot import it (run these tests with ComfyUI's own venv), every test here skips
with the reason. Locally:
    /work/shared/tools/comfyui_local.sh install-pack .       # our requirements into ComfyUI's venv
    eval "$(/work/shared/tools/comfyui_local.sh env)"        # COMFYUI_PATH, COMFYUI_PYTHON
    $COMFYUI_PYTHON -m pytest -m "" tests/comfy           # -m "": the slow ones too (e2e, browser)
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"diffusion_models": "diffusion_models", "text_encoders": "text_encoders", "vae": "vae", "loras": "loras"}


def comfy_root() -> tuple[Path | None, str]:
    """(ComfyUI folder or None, why not)."""
    env = os.environ.get("COMFYUI_PATH", "").strip()
    if env:
        root = Path(env).expanduser().resolve()
        if (root / "comfy" / "model_management.py").is_file():
            return root, ""
        return None, f"COMFYUI_PATH={env} holds no ComfyUI (no comfy/model_management.py)"
    if REPO.parent.name == "custom_nodes" and (REPO.parent.parent / "comfy").is_dir():
        return REPO.parent.parent, ""
    return None, "no ComfyUI: set COMFYUI_PATH (tools: comfyui_local.sh env) or put the pack in ComfyUI/custom_nodes"


def _import_comfy(root: Path) -> SimpleNamespace:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from comfy.cli_args import args  # parsed only if a main.py enabled parsing: defaults here

    args.cpu = True
    # as main.py does: ComfyUI's `utils` package first, before nodes.py puts comfy/ (with its utils.py) on sys.path
    importlib.import_module("utils.extra_config")
    import comfy.lora
    import comfy.model_base
    import comfy.model_management
    import comfy.sd
    import comfy.utils
    import folder_paths
    import server

    import nodes

    return SimpleNamespace(root=root, args=args, mm=comfy.model_management, sd=comfy.sd, lora=comfy.lora,
                           utils=comfy.utils, model_base=comfy.model_base, folder_paths=folder_paths, nodes=nodes,
                           server=server)


@pytest.fixture(scope="session")
def comfy_path() -> Path:
    """The ComfyUI folder, for tests that run a server in another process (nothing is imported here)."""
    root, why = comfy_root()
    if root is None:
        pytest.skip(why)
    return root


@pytest.fixture(scope="session")
def comfy() -> SimpleNamespace:
    """ComfyUI's modules, imported in-process on CPU (skips all tests here when unavailable)."""
    root, why = comfy_root()
    if root is None:
        pytest.skip(why)
    try:
        return _import_comfy(root)
    except Exception as e:  # wrong Python (missing ComfyUI requirements) or a broken tree
        if str(root) in sys.path:
            sys.path.remove(str(root))
        pytest.skip(f"ComfyUI at {root} does not import with {sys.executable} ({type(e).__name__}: {e}); "
                    "run tests/comfy with ComfyUI's venv python")


@pytest.fixture(scope="session")
def comfy_models(comfy, tmp_path_factory) -> dict[str, Path]:
    """The tiny ComfyUI-layout files, registered in folder_paths so the stock loader nodes list them."""
    from lumina2_train.tiny.comfy_layout import write_comfy_tiny_models

    root = tmp_path_factory.mktemp("comfy_models")
    paths = write_comfy_tiny_models(root, seed=0)
    for kind, sub in FOLDERS.items():
        (root / sub).mkdir(exist_ok=True)
        comfy.folder_paths.add_model_folder_path(kind, str(root / sub), is_default=True)
    return {**paths, "root": root, "loras": root / "loras"}


@pytest.fixture(scope="session")
def comfy_model(comfy, comfy_models):
    """MODEL from the stock UNETLoader node, loaded under inference mode as ComfyUI runs nodes."""
    with torch.inference_mode():
        (model,) = comfy.nodes.UNETLoader().load_unet(comfy_models["diffusion_model"].name, "default")
    return model


@pytest.fixture(scope="session")
def comfy_clip(comfy, comfy_models):
    """CLIP through CLIPLoader's code path (comfy.sd.load_clip, type lumina2) with the tiny Gemma2 config."""
    from lumina2_train.tiny.comfy_layout import comfy_tiny_clip_options

    with torch.inference_mode():
        return comfy.sd.load_clip([str(comfy_models["text_encoder"])], clip_type=comfy.sd.CLIPType.LUMINA2,
                                  model_options=comfy_tiny_clip_options())


@pytest.fixture(scope="session")
def comfy_qwen3(comfy, tmp_path_factory):
    """(CLIP, its state dict): Z-Image's Qwen3-4B CLIP through CLIPLoader's code path (comfy.sd.load_clip, type
    lumina2) on a random Qwen3-4B-layout file of 3 thin layers (tiny/qwen3.py). Skips on a ComfyUI without it."""
    from safetensors.torch import save_file

    from lumina2_train.tiny.qwen3 import comfy_tiny_qwen3_options, comfy_tiny_qwen3_state_dict

    if not (comfy.root / "comfy" / "text_encoders" / "z_image.py").is_file():
        pytest.skip(f"ComfyUI at {comfy.root} has no Z-Image text encoder (Qwen3-4B; ComfyUI 0.3.64 predates it)")
    sd = comfy_tiny_qwen3_state_dict(seed=0, dtype=torch.bfloat16)
    path = tmp_path_factory.mktemp("qwen3") / "qwen_3_4b_tiny.safetensors"
    save_file(sd, str(path))
    with torch.inference_mode():
        clip = comfy.sd.load_clip([str(path)], clip_type=comfy.sd.CLIPType.LUMINA2,
                                  model_options=comfy_tiny_qwen3_options())
    return clip, sd


@pytest.fixture(scope="module")
def zimage_model(comfy, comfy_models):
    """A tiny Z-Image MODEL from the stock UNETLoader (tiny/comfy_layout.py: 3840 wide as ComfyUI's detection needs,
    one main layer), per test module, its file removed after; skips on a ComfyUI without Z-Image (0.3.64)."""
    import importlib

    if not hasattr(importlib.import_module("comfy.supported_models"), "ZImage"):
        pytest.skip("this ComfyUI has no Z-Image (0.3.64)")
    from lumina2_train.tiny.comfy_layout import write_comfy_tiny_zimage

    path = write_comfy_tiny_zimage(comfy_models["root"], seed=0)
    with torch.inference_mode():
        (model,) = comfy.nodes.UNETLoader().load_unet(path.name, "default")
    assert type(model.model.model_config).__name__ == "ZImage"
    yield model
    path.unlink()


@pytest.fixture(scope="session")
def comfy_vae(comfy, comfy_models):
    """VAE from the stock VAELoader node."""
    with torch.inference_mode():
        (vae,) = comfy.nodes.VAELoader().load_vae(comfy_models["vae"].name)
    return vae


@pytest.fixture
def comfy_inputs():
    """comfy_inputs(b, L, seed) -> (latents (b,16,8,12), sigma (b,), feats (b,L,32)) at the tiny model's width."""
    def make(b: int = 2, L: int = 7, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(b, 16, 8, 12, generator=gen), torch.rand(b, generator=gen) * 0.9 + 0.05,
                torch.randn(b, L, 32, generator=gen))
    return make


def _state_hash(module: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def state_hash():
    """state_hash(module) -> exact sha256 of every parameter and buffer (names, dtypes, bytes)."""
    return _state_hash


@pytest.fixture(scope="session")
def pack(comfy, tmp_path_factory) -> SimpleNamespace:
    """This pack loaded by ComfyUI's own custom-node loader (as a server loads it), after ComfyUI's built-in extra
    nodes; ComfyUI's input/output/temp folders point into a temporary folder."""
    import asyncio

    base = tmp_path_factory.mktemp("comfy_dirs")
    for kind in ("input", "output", "temp"):
        (base / kind).mkdir()
        getattr(comfy.folder_paths, f"set_{kind}_directory")(str(base / kind))
    asyncio.run(comfy.nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    assert asyncio.run(comfy.nodes.load_custom_node(str(REPO))), "the pack did not load (see the log above)"
    module = sys.modules[str(REPO).replace(".", "_x_")]
    ours = {k: v for k, v in comfy.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Lumina2T_")}
    ns = SimpleNamespace(module=module, nodes=ours, base=base, input=base / "input", output=base / "output",
                           lib=lambda name: importlib.import_module(f"{module.__name__}.lumina2_train.{name}"))
    ns.run = functools.partial(run_node, ns)  # pack.run(node_id, **inputs), as ComfyUI executes it
    ns.defaults = functools.partial(defaults, ns)  # pack.defaults(node_id, **overrides)
    return ns


def run_node(pack, node_id: str, *, unique_id: str = "1", extra_pnginfo=None, links: dict | None = None, **inputs):
    """Execute one of our nodes through ComfyUI's own execution path, as a server runs a prompt's node:
    `execution.get_input_data` (the declared inputs, the hidden ones the schema asks for, V3 data) and
    `execution._async_map_node_over_list` (the class clone, the locked execute), under inference mode. Undeclared
    inputs are dropped as ComfyUI drops them; a value is passed as a constant widget/link value would be.

    `links` gives inputs as ComfyUI's output cache holds a link's value: the list of the upstream node's outputs
    (one item per execution, or an OUTPUT_IS_LIST node's whole list), which get_input_data passes on unwrapped."""
    import asyncio
    import inspect

    import execution

    cls = pack.nodes[node_id]
    input_data, missing, v3 = execution.get_input_data(inputs, cls, unique_id,
                                                       extra_data={"extra_pnginfo": extra_pnginfo})
    assert not missing, f"{node_id}: inputs given as links: {sorted(missing)}"
    declared = {k for kind in ("required", "optional") for k in cls.INPUT_TYPES().get(kind, {})}
    for name, outputs in (links or {}).items():
        assert name in declared and isinstance(outputs, list), f"{node_id}: link {name!r} must be a declared input's list"
        input_data[name] = outputs
    params = inspect.signature(execution._async_map_node_over_list).parameters
    # the third item of get_input_data: `hidden_inputs` [0.3.64], the whole `v3_data` [newer]
    extra = {"v3_data" if "v3_data" in params else "hidden_inputs": v3}
    with torch.inference_mode():
        results = asyncio.run(execution._async_map_node_over_list("test", unique_id, cls, input_data, cls.FUNCTION,
                                                                  allow_interrupt=True, **extra))
    assert len(results) == 1, f"{node_id}: {len(results)} results (a list input ran the node more than once)"
    return results[0]


def defaults(pack, node_id: str, **overrides) -> dict:
    """Every widget of a node at its default, then `overrides`."""
    schema = pack.nodes[node_id].GET_SCHEMA()
    values = {i.id: i.default for i in schema.inputs if getattr(i, "default", None) is not None}
    return {**values, **overrides}


@pytest.fixture
def object_info(comfy) -> dict:
    """What GET /object_info returns, for every registered node (V3 and V1)."""
    out = {}
    for name, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items():
        if hasattr(cls, "GET_NODE_INFO_V1"):
            out[name] = cls.GET_NODE_INFO_V1()
        else:
            spec = cls.INPUT_TYPES()
            out[name] = {"input": spec, "input_order": {k: list(v) for k, v in spec.items()},
                         "output": list(cls.RETURN_TYPES)}
    return out
