"""The ComfyUI API this pack calls, checked against the running ComfyUI (docs/comfyui.md has it as a table, per
ComfyUI version): each module attribute the glue, the nodes and these tests use exists, and accepts the call as the
pack makes it (its arguments bound against the signature). The V3 node API is read from nodes/ itself: every `io.`/
`ui.` name is in the public facade, every constructor call binds, and only an input's id is passed by position."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfy

NODES = Path(__file__).resolve().parents[2] / "nodes"

# "module:attribute.path" -> (positional arguments, keyword arguments), as the pack calls it
CALLS = {
    "comfy.model_management:load_models_gpu": ((["patcher"],), {"memory_required": 1e20, "force_full_load": True}),
    "comfy.model_management:free_memory": ((1e30, "cpu"), {"keep_loaded": []}),
    "comfy.model_management:throw_exception_if_processing_interrupted": ((), {}),
    "comfy.model_management:interrupt_current_processing": ((True,), {}),
    "comfy.model_management:processing_interrupted": ((), {}),
    "comfy.model_management:soft_empty_cache": ((), {}),
    "comfy.model_management:get_torch_device": ((), {}),
    "comfy.ops:cast_bias_weight": (("module",), {"dtype": None, "device": None, "bias_dtype": None}),
    "comfy.utils:ProgressBar": ((10,), {"node_id": "1"}),
    "comfy.utils:ProgressBar.update_absolute": (("bar", 1, 10, ("JPEG", None, 512)), {}),
    "comfy.utils:load_torch_file": (("file",), {"safe_load": True}),
    "comfy.utils:set_progress_bar_global_hook": ((None,), {}),
    "comfy.sd:load_lora_for_models": (("model", None, {}, 1.0, 0), {}),
    "comfy.sd:load_clip": ((["file"],), {"clip_type": "type", "model_options": {}}),
    "comfy.sd:load_diffusion_model_state_dict": (({},), {"model_options": {}}),
    "comfy.sd:CLIP.tokenize": (("clip", "text"), {"disable_weights": True}),
    "comfy.sd:CLIP.encode_from_tokens": (("clip", {}), {"return_dict": True}),
    "comfy.sd:CLIP.get_sd": (("clip",), {}),
    "comfy.sd:VAE.encode": (("vae", "pixels"), {}),
    "comfy.sd:VAE.decode": (("vae", "latents"), {}),
    "comfy.sd:VAE.get_sd": (("vae",), {}),
    "comfy.sd:VAE.spacial_compression_encode": (("vae",), {}),
    "comfy.model_patcher:ModelPatcher.clone": (("patcher",), {}),
    "folder_paths:get_folder_paths": (("loras",), {}),
    "folder_paths:get_filename_list": (("loras",), {}),
    "folder_paths:get_full_path_or_raise": (("loras", "name"), {}),
    "folder_paths:get_full_path": (("loras", "name"), {}),
    "folder_paths:get_output_directory": ((), {}),
    "folder_paths:get_input_directory": ((), {}),
    "folder_paths:get_temp_directory": ((), {}),
    "folder_paths:add_model_folder_path": (("loras", "path"), {"is_default": True}),
    "folder_paths:set_output_directory": (("path",), {}),
    "server:PromptServer.send_sync": (("server", "lumina2t.step", {}, None), {}),
    "nodes:UNETLoader.load_unet": (("node", "name", "default"), {}),
    "nodes:VAELoader.load_vae": (("node", "name"), {}),
    "nodes:LoraLoaderModelOnly.load_lora_model_only": (("node", "model", "name", 1.0), {}),
    "nodes:init_extra_nodes": ((), {"init_custom_nodes": False, "init_api_nodes": False}),
    "nodes:load_custom_node": (("path",), {}),
    "execution:get_input_data": (({}, "cls", "1"), {"extra_data": {}}),
    "execution:validate_prompt": (("id", {}, None), {}),
}
# names the pack reads without calling them
ATTRIBUTES = ["comfy.model_management:InterruptProcessingException", "comfy.model_management:current_loaded_models",
              "comfy.model_base:Lumina2", "comfy.sd:CLIPType.LUMINA2", "comfy.ldm.lumina.model:NextDiT",
              "comfy.ops:disable_weight_init", "comfy.cli_args:args", "server:PromptServer",
              "nodes:NODE_CLASS_MAPPINGS", "execution:_async_map_node_over_list"]


def resolve(path: str):
    module, _, attrs = path.partition(":")
    obj = importlib.import_module(module)
    for name in attrs.split("."):
        obj = getattr(obj, name)
    return obj


@pytest.mark.parametrize("path", sorted(CALLS))
def test_each_call_the_pack_makes_binds_to_this_comfyui(comfy, path):
    args, kwargs = CALLS[path]
    fn = resolve(path)
    inspect.signature(fn).bind(*args, **kwargs)  # TypeError names the argument this ComfyUI lacks


@pytest.mark.parametrize("path", ATTRIBUTES)
def test_each_name_the_pack_reads_exists(comfy, path):
    assert resolve(path) is not None


def test_dynamic_vram_models_can_be_cloned_static(comfy):
    """backbones/comfy.py trains over clone(disable_dynamic=True) where a MODEL can be dynamic (is_dynamic exists);
    a ComfyUI with dynamic models but without that argument would leave training without the real weights."""
    import comfy.model_patcher as mp

    if not hasattr(mp.ModelPatcher, "is_dynamic"):
        pytest.skip("this ComfyUI has no dynamic-VRAM models (0.3.64)")
    inspect.signature(mp.ModelPatcher.clone).bind("patcher", disable_dynamic=True)


# ---------------------------------------------------------------- the V3 node API, read from nodes/

def _calls() -> list[tuple[str, ast.Call]]:
    """(file:line, call) for every call in nodes/ whose callee is an attribute chain rooted at io, ui or types."""
    out = []
    for file in sorted(NODES.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and _chain(node.func)[:1] in (["io"], ["ui"], ["types"]):
                out.append((f"nodes/{file.name}:{node.lineno}", node))
    return out


def _chain(expr) -> list[str]:
    names = []
    while isinstance(expr, ast.Attribute):
        names.append(expr.attr)
        expr = expr.value
    return [expr.id, *reversed(names)] if isinstance(expr, ast.Name) else []


def test_node_constructors_pass_only_the_id_by_position():
    """Inputs and outputs are built by keyword: ComfyUI 0.38's Combo.Input has a new positional parameter
    (remote_combo) between two old ones, so any argument after the id given by position can change meaning."""
    calls = [(where, call) for where, call in _calls() if _chain(call.func)[-1] in ("Input", "Output")]
    # the walker sees the nodes' own widgets; the config-backed ones are built by nodes/_api.widget, which passes
    # only the id by position too (`_INPUTS[kind](input_id, **spec, **comfy_kwargs)`)
    assert len(calls) > 40
    assert [where for where, call in calls if len(call.args) > 1] == []


@pytest.fixture(scope="module")
def api(pack):
    """The pack's nodes/_api.py as ComfyUI loaded it: the io and ui modules the nodes use."""
    return importlib.import_module(f"{pack.module.__name__}.nodes._api")


def test_v3_names_are_in_the_public_facade(api):
    """Only names the facade exports are reachable: newer comfy_api.latest.io and .ui are star-import modules over
    their private _io/_ui (their __all__), so a name dropped from __all__ fails here before a user's ComfyUI
    fails to import the pack."""
    roots = {"io": api.io, "ui": api.ui}
    used = {tuple(_chain(n)[:2]) for file in NODES.glob("*.py") for n in ast.walk(ast.parse(file.read_text()))
            if isinstance(n, ast.Attribute) and _chain(n)[:1] in (["io"], ["ui"]) and len(_chain(n)) >= 2}
    assert len(used) > 15
    assert sorted(f"{root}.{name}" for root, name in used if not hasattr(roots[root], name)) == []


def test_v3_constructor_calls_bind(api):
    """Every io/ui/types call in nodes/ binds to this ComfyUI's signature (keywords included)."""
    roots = {"io": api.io, "ui": api.ui, "types": api.io.Custom("LUMINA2T_CONTRACT")}
    unbound = []
    for where, call in _calls():
        names = _chain(call.func)
        obj = roots[names[0]]
        for name in names[2 if names[0] == "types" else 1:]:
            obj = getattr(obj, name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        args = ["self"] * inspect.isclass(obj) + ["arg"] * len(call.args)
        kwargs = {k.arg: None for k in call.keywords if k.arg is not None}
        try:
            inspect.signature(target).bind(*args, **kwargs)
        except TypeError as e:
            unbound.append(f"{where} {'.'.join(names)}: {e}")
    assert unbound == []
