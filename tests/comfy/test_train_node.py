"""The nodes end to end in-process, as ComfyUI runs them (inference mode, hidden inputs): dataset -> cache ->
adapter -> Train node on the tiny ComfyUI-layout Lumina2; the saved file loads through the stock LoRA loader with
every key and equals the Train node's MODEL; the input MODEL is bit-identical; cancel leaves a checkpoint and a
resumed run continues the step count; Save Adapter and Plot Loss."""

import logging

import pytest
import torch
from safetensors import safe_open

from lumina2_train.demo import VALIDATION_PROMPTS, write_demo_dataset

pytestmark = pytest.mark.comfy
TRAIN = "Lumina2T_TrainLoRA"






def velocity(comfy, model, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    x, sigma, feats = torch.randn(2, 16, 8, 8, generator=gen), torch.tensor([0.3, 0.8]), torch.randn(2, 6, 32,
                                                                                                   generator=gen)
    with torch.inference_mode():
        comfy.mm.load_models_gpu([model])
        return model.model.diffusion_model(x, sigma, context=feats, num_tokens=6, transformer_options={}).clone()


@pytest.fixture(scope="module")
def settings(pack, comfy_clip, comfy_vae):
    """Dataset, cache, validation and adapter for the Train-node runs. No system prompt: every token is a step's
    cost on ComfyUI's 2304-wide model (docs/ci.md); the system-prompt join is pinned in test_encoders and the
    full fine-tune run keeps it."""
    write_demo_dataset(pack.input / "shapes", size_px=64)
    dataset = pack.run("Lumina2T_LoadDataset", **pack.defaults("Lumina2T_LoadDataset", folder="shapes",
                                                                  resolution=64, min_size_px=0))
    validation = pack.run("Lumina2T_ConfigureValidation", **pack.defaults(
        "Lumina2T_ConfigureValidation", prompts=VALIDATION_PROMPTS[0], steps=2, width=64, height=64))[0]
    cache = pack.run("Lumina2T_CacheLatentsText", dataset=dataset[0], clip=comfy_clip, vae=comfy_vae,
                     validation=validation, **pack.defaults("Lumina2T_CacheLatentsText", system_prompt="none"))
    adapter = pack.run("Lumina2T_ConfigureAdapter", **pack.defaults("Lumina2T_ConfigureAdapter", rank=4,
                                                                      alpha=4.0, target_ffn=True))[0]
    return {"dataset": dataset, "cache": cache, "validation": validation, "adapter": adapter}


def train_inputs(pack, settings, **overrides) -> dict:
    return pack.defaults(TRAIN, cache=settings["cache"][0], adapter=settings["adapter"], lr=2e-3, seed=1,
                    **overrides)


@pytest.fixture(scope="module")
def trained(pack, comfy, comfy_model, comfy_vae, settings, state_hash):
    tree = comfy_model.model.diffusion_model
    with torch.inference_mode():  # a patched clone loaded by an earlier test patched the shared module in place;
        comfy.mm.load_models_gpu([comfy_model])  # loading the MODEL itself restores its own weights first
    before = state_hash(tree), velocity(comfy, comfy_model)
    progress, flags = [], []  # ComfyUI's progress hook, called after every step; in_training as it saw it
    flag_before = (hasattr(comfy.mm, "in_training"), getattr(comfy.mm, "in_training", None))

    def hook(v, total, preview, node_id=None):
        progress.append((node_id, v))
        flags.append((v, getattr(comfy.mm, "in_training", None)))

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        out = pack.run(TRAIN, unique_id="7", extra_pnginfo={"workflow": {"nodes": [], "note": "test"}},
                       **train_inputs(pack, settings, model=comfy_model, lora_name="unit/tiny", steps=3,
                                      validation=settings["validation"], vae=comfy_vae))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    after = state_hash(tree), velocity(comfy, comfy_model)
    flag_after = (hasattr(comfy.mm, "in_training"), getattr(comfy.mm, "in_training", None))
    return {"out": out, "before": before, "after": after, "progress": progress,
            "in_training": {"before": flag_before, "seen": flags, "after": flag_after}}


def test_dataset_and_cache_nodes_report(settings):
    assert "8 used" in settings["dataset"][1] and "Buckets" in settings["dataset"][1]
    assert settings["dataset"].ui.as_dict()["text"][0] == settings["dataset"][1]  # shown on the node
    cache, summary = settings["cache"][0], settings["cache"][1]
    assert len(cache) == 8 and "8 images cached" in summary
    assert cache.prompt_features(VALIDATION_PROMPTS[0]).shape[-1] == 32  # validation prompt cached too


def test_train_node_outputs_and_file(pack, trained, comfy_models):
    model, lora, loss, path, samples = trained["out"].args
    assert path == str(comfy_models["loras"] / "unit" / "tiny.safetensors")
    assert samples.shape == (1, 64, 64, 3) and float(samples.max()) <= 1.0  # the grid of the 1 validation sample
    assert len(loss["loss"]) == 3 and all(v == v for v in loss["loss"])
    with safe_open(path, framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == set(lora) and all(k.startswith("diffusion_model.") for k in keys)
    assert meta["lumina2t.step"] == "3" and '"note": "test"' in meta["lumina2t.workflow"]
    ui = trained["out"].ui
    assert "3 steps" in ui["text"][0] and ui["images"]  # summary + the last validation grid
    values = [v for n, v in trained["progress"] if n == "7"]  # every step, plus the validation previews
    assert [v for v in values if v > 0][:3] == [1, 2, 3] and values[-1] == 3
    job = pack.lib("comfyui.jobs").history("7")["job"]
    assert job["status"] == "done" and [s["step"] for s in job["steps"]] == [1, 2, 3] and job["lora"] == path


def test_input_model_is_bit_identical_after_training(trained):
    assert trained["after"][0] == trained["before"][0]
    assert torch.equal(trained["after"][1], trained["before"][1])


def test_file_loads_in_stock_comfyui_and_equals_train_node_model(comfy, comfy_model, trained, caplog):
    model, lora, *_ = trained["out"].args
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        (stock,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(comfy_model, "unit/tiny.safetensors", 1.0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert {k for k in stock.patches} == {k for k in model.patches} and len(stock.patches) == len(lora) // 2
    trained_out = velocity(comfy, model)
    assert torch.equal(velocity(comfy, stock), trained_out)
    assert (trained_out - trained["before"][1]).abs().max() > 1e-4  # the LoRA does something


def test_advanced_node_trains_after_a_lora_was_patched_in(pack, comfy, comfy_model, settings, trained):
    """ComfyUI's unpatch_model restores weights as Parameters around inference tensors; fp32 without activation
    checkpointing then uses them as they are, so they must be recognised as unsafe for autograd."""
    with torch.inference_mode():
        (stock,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(comfy_model, "unit/tiny.safetensors", 1.0)
    velocity(comfy, stock)  # loaded patched: the next load unpatches
    out = pack.run("Lumina2T_TrainLoRAAdvanced", unique_id="11", **pack.defaults(
        "Lumina2T_TrainLoRAAdvanced", model=comfy_model, cache=settings["cache"][0],
        adapter=settings["adapter"], lora_name="unit/advanced", steps=1, precision="fp32", checkpointing="off",
        save_format="kohya", save_dtype="fp32"))
    with safe_open(out.args[3], framework="pt") as f:
        assert all(k.startswith("lora_unet_") for k in f.keys())
    assert len(out.args[2]["loss"]) == 1
    assert out.args[4].shape == (1, 64, 64, 3) and float(out.args[4].max()) == 0.0  # no validation: black


def test_cancel_leaves_a_checkpoint_and_resume_continues_the_step_count(pack, comfy, comfy_model, comfy_models,
                                                                        settings):
    def stop_at_two(value, total, preview, node_id=None):
        if node_id == "9" and value == 2:
            comfy.mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(stop_at_two)
    try:
        with pytest.raises(comfy.mm.InterruptProcessingException):
            pack.run(TRAIN, unique_id="9", **train_inputs(pack, settings, model=comfy_model,
                                                                  lora_name="unit/cancel", steps=6))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    jobs = pack.lib("comfyui.jobs")
    job = jobs.history("9")["job"]
    assert job["status"] == "cancelled" and [s["step"] for s in job["steps"]] == [1, 2]
    assert job["checkpoint"].endswith("cancel/checkpoints/step_00000002")
    assert job["checkpoint"] in job["detail"] and "set resume_from to 'cancel'" in job["detail"]  # the status line
    assert not (comfy_models["loras"] / "unit" / "cancel.safetensors").exists()

    out = pack.run(TRAIN, unique_id="9", **train_inputs(pack, settings, model=comfy_model,
                                                              lora_name="unit/cancel", steps=4, resume_from="cancel"))
    job = jobs.history("9")["job"]
    assert [s["step"] for s in job["steps"]] == [3, 4] and job["status"] == "done"
    assert len(out.args[2]["loss"]) == 4  # the history of the whole run
    with safe_open(out.args[3], framework="pt") as f:
        assert f.metadata()["lumina2t.step"] == "4"


def test_save_lora_and_plot_loss(pack, trained):
    _, lora, loss, *_ = trained["out"].args
    for fmt, prefix in (("kohya", "lora_unet_"), ("diffusers", "transformer.")):
        (path,) = pack.run("Lumina2T_SaveLoRA", lora=lora, name=f"unit/export_{fmt}", format=fmt, dtype="fp32",
                           destination="output" if fmt == "diffusers" else "loras").args
        with safe_open(path, framework="pt") as f:
            assert all(k.startswith(prefix) for k in f.keys())
    (image,) = pack.run("Lumina2T_PlotLoss", loss=loss, log_scale=False, width=300, height=200).args
    assert image.shape == (1, 200, 300, 3) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_dataset_from_images(pack):
    images = [torch.rand(2, 64, 64, 3), torch.rand(1, 64, 96, 3)]
    # two image batches from an upstream list output (as ComfyUI's cache holds them), the rest widget values
    out = pack.run("Lumina2T_LoadImageDataset", links={"images": images},
                   **pack.defaults("Lumina2T_LoadImageDataset", resolution=64, captions="one\ntwo\nthree"))
    handle = out.args[0]
    assert [i.caption for i in handle.items] == ["one", "two", "three"]
    assert len({i.bucket for i in handle.items}) == 2  # two aspect ratios, two buckets


def test_bad_names_are_refused_before_any_model_loads(pack, comfy_model, settings):
    errors = pack.lib("errors")
    for name in ("../escape", "/abs/path", "a/../../b"):
        with pytest.raises(errors.ConfigError, match="lora_name"):
            pack.run(TRAIN, **train_inputs(pack, settings, model=comfy_model, lora_name=name, steps=1))
    with pytest.raises(errors.ConfigError, match="validation"):  # prompts not in the cache
        v = pack.lib("config").ValidationConfig(prompts=("never cached",))
        pack.run(TRAIN, **train_inputs(pack, settings, model=comfy_model, lora_name="x", steps=1, validation=v))


def test_unusable_output_paths_are_refused_naming_the_input_before_training(pack, comfy, comfy_model, comfy_models,
                                                                             settings):
    """A file where lora_name's subfolder goes, a file as ComfyUI's output folder, and a file where Save LoRA's
    name's subfolder goes: a PathError naming the input and the fix, and no run folder is made. Fails before
    the fix: raw FileExistsError / NotADirectoryError / IsADirectoryError, the lora_name ones after training."""
    errors, paths = pack.lib("errors"), pack.lib("storage.paths")
    loras = comfy_models["loras"]
    (loras / "blocked").write_text("a file where a subfolder goes")
    runs = pack.output / "lumina2_train"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    with pytest.raises(paths.PathError, match=r"lora_name: .*blocked is a file, not a folder.*Move that file away"):
        pack.run(TRAIN, **train_inputs(pack, settings, model=comfy_model, lora_name="blocked/x", steps=1))
    blocker = pack.base / "output_is_a_file"
    blocker.write_text("not a folder")
    comfy.folder_paths.set_output_directory(str(blocker))
    try:
        with pytest.raises(paths.PathError, match=r"ComfyUI's output folder: .*output_is_a_file is a file, not a "
                           r"folder.*Move that file away"):
            pack.run(TRAIN, **train_inputs(pack, settings, model=comfy_model, lora_name="fine", steps=1))
    finally:
        comfy.folder_paths.set_output_directory(str(pack.output))
    assert (set(runs.iterdir()) if runs.is_dir() else set()) == before  # no run folder was made
    lora = {"diffusion_model.layers.0.attention.out.lora_A.weight": torch.zeros(4, 96),  # checked before it is read
            "diffusion_model.layers.0.attention.out.lora_B.weight": torch.zeros(96, 4)}
    with pytest.raises(errors.ConfigError, match=r"name: .*blocked is a file, not a folder"):
        pack.run("Lumina2T_SaveLoRA", lora=lora, name="blocked/y", format="comfyui", dtype="fp32",
                 destination="loras")


def test_comfyuis_training_state_is_set_during_the_run_where_it_exists(trained):
    """[newer] `comfy.model_management.in_training` is on while the Train node trains (ComfyUI's models skip
    their fused inference kernels then; ComfyUI's own trainer sets it the same way) and back to its old value
    afterwards; a ComfyUI without it (0.3.64) is left without it. Observed from ComfyUI's progress hook, which
    the Train node calls after every step (the `trained` run)."""
    state = trained["in_training"]
    has_flag, before = state["before"]
    steps = [flag for v, flag in state["seen"] if v >= 1]
    assert len(steps) >= 3, f"the progress hook saw no training steps: {state['seen']}"
    assert steps == [True if has_flag else None] * len(steps)
    assert state["after"] == state["before"]


def test_comfyuis_cpu_models_are_not_dynamic_so_the_dynamic_path_needs_a_gpu(comfy, comfy_model):
    """[newer] On a CPU, ComfyUI itself builds an ordinary ModelPatcher (ModelPatcherDynamic reroutes CPU load
    devices), so the Train node's dynamic-VRAM branch (a `clone(disable_dynamic=True)` copy) cannot run here;
    this pins that fact, so the GPU-only gap stays named (docs/comfyui.md)."""
    is_dynamic = getattr(comfy_model, "is_dynamic", None)
    assert not (callable(is_dynamic) and is_dynamic())
    from lumina2_train.backbones.comfy import training_clone

    clone = training_clone(comfy_model)
    assert type(clone) is type(comfy_model) and clone.model is comfy_model.model  # a plain clone over the module
