"""3 Train: Train Adapter or Full Model (simple) and its Advanced form. Both call comfyui/train.train_in_comfy.

Outputs: the MODEL with the trained LoRA patched in through ComfyUI's own LoRA loader (from the saved file's
state dict), the LoRA as LORA_MODEL, the loss history as LOSS_MAP, the file's path and the final
validation grid as an IMAGE (added last: links of older workflows keep their slots). The file goes to
models/loras (LoraLoaderModelOnly lists it at once); checkpoints and previews to output/lumina2_train/.
"""

from __future__ import annotations

from ..lumina2_train.adapters.kinds import kind_of
from ..lumina2_train.comfyui import bridge as comfy_bridge
from ..lumina2_train.comfyui import train as comfy_run
from ..lumina2_train.config import (
    HubConfig,
    ModelConfig,
    RunConfig,
    SaveConfig,
    TrackingConfig,
    TrainConfig,
    ValidationConfig,
)
from ..lumina2_train.storage.paths import name_problem
from . import types
from ._api import io, ui, widget
from .train_options import (
    added_inputs,
    advanced_train_inputs,
    model_from_widgets,
    save_from_widgets,
    train_from_widgets,
)

CATEGORY = "Lumina2 Trainer/3 Train"
_T = TrainConfig()
_S = SaveConfig()


def head_inputs() -> list[io.Input]:
    return [
        io.Model.Input("model", tooltip="Lumina2's MODEL (Load Checkpoint, or Load Diffusion Model with "
                                        "lumina_2_model_bf16.safetensors). It is never modified: training works on "
                                        "a clone, adapters live beside it."),
        types.Cache.Input("cache", tooltip="Output of 'Cache Latents & Text'."),
        types.Adapter.Input("adapter", tooltip="Output of 'Configure Adapter'."),
        io.String.Input("lora_name", default=_S.name,
                        tooltip="File name in models/loras (a subfolder like 'chars/alice' is allowed); a full "
                                "fine-tune's model goes to models/diffusion_models under this name. An existing file "
                                "is never overwritten: name_2, name_3, ... are used instead."),
    ]


def tail_inputs() -> list[io.Input]:
    return [
        types.Validation.Input("validation", optional=True,
                               tooltip="Validation Settings: sample previews during training. Connect the same node "
                                       "to 'Cache Latents & Text' so its prompts are encoded."),
        io.Vae.Input("vae", optional=True, tooltip="The Flux VAE, to decode validation samples into previews."),
        io.String.Input("resume_from", optional=True, default="",
                        tooltip="Resume a run: its folder under output/lumina2_train (e.g. 'my_lora') or one of its "
                                "checkpoints ('my_lora/checkpoints/step_00000100'). Settings must match the run's; "
                                "steps may grow. Empty = a new run."),
        types.Tracking.Input("tracking", optional=True,
                             tooltip="Tracking Settings: log to TensorBoard / Weights & Biases (run folder's logs/)."),
        types.Hub.Input("hub", optional=True,
                        tooltip="Hub Upload Settings: upload the result to the Hugging Face Hub after training."),
    ]


def outputs() -> list[io.Output]:
    return [
        io.Model.Output("trained_model", display_name="model",
                        tooltip="A clone of the input MODEL with the saved LoRA applied (what "
                                "LoraLoaderModelOnly gives from the file; a full fine-tune: what Load Diffusion "
                                "Model gives from its file). Connect it to KSampler."),
        io.LoraModel.Output("lora", display_name="lora",
                            tooltip="The LoRA's tensors, as saved (for Save Adapter or Load LoRA Model); a full "
                                    "fine-tune: its .diff patches to the input MODEL."),
        io.LossMap.Output("loss", display_name="loss", tooltip="Loss per optimizer step (for Plot Loss)."),
        io.String.Output("lora_path", display_name="lora_path",
                         tooltip="Path of the saved LoRA file (a full fine-tune: of the diffusion-model file)."),
        io.Image.Output("samples", display_name="samples",
                        tooltip="The final validation samples in one grid image (what the node shows); a black "
                                "64 px image when no validation ran (no prompts or no VAE)."),
    ]


def check_lora_name(lora_name) -> bool | str:
    """validate_inputs of both Train nodes: a bad output name is refused when the prompt is queued."""
    return True if not isinstance(lora_name, str) else (name_problem(lora_name, "lora_name") or True)


def run_training(cls, model, cache, adapter, lora_name: str, train: TrainConfig, save: SaveConfig,
                 validation: ValidationConfig | None, vae, resume_from: str, *, tracking: TrackingConfig | None = None,
                 hub: HubConfig | None = None, model_cfg: ModelConfig | None = None) -> io.NodeOutput:
    """What both Train nodes do once their widgets are configs."""
    cfg = RunConfig(model=model_cfg or ModelConfig(), adapter=adapter, train=train,
                    validation=validation or ValidationConfig(), save=save, resume_from=resume_from or "", tracking=tracking or TrackingConfig(), hub=hub or HubConfig())
    workflow = (cls.hidden.extra_pnginfo or {}).get("workflow") if isinstance(cls.hidden.extra_pnginfo, dict) \
        else None
    out = comfy_run.train_in_comfy(model, cache, cfg, lora_name=lora_name, node_id=cls.hidden.unique_id, vae=vae,
                                   workflow=workflow)
    what = "Model" if kind_of(adapter).writes_model else "LoRA"
    text = f"{out.step} steps, final loss {out.losses['loss'][-1]:.4f}\n{what}: {out.path}\nrun folder: {out.run_dir}"
    shown = {"text": (text,)}
    if out.previews is not None:
        shown |= ui.PreviewImage(out.previews, cls=cls).as_dict()
    return io.NodeOutput(out.model, out.lora, out.losses, str(out.path), comfy_bridge.preview_grid(out.previews),
                         ui=shown)


class TrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_TrainLoRA", display_name="Train Adapter or Full Model (Lumina2)", category=CATEGORY,
            description="Trains the adapter on the cache with Lumina2's recipe, showing progress, a live loss chart "
                        "and previews; the stop button cancels within one step and leaves a resumable checkpoint. "
                        "Writes the LoRA to models/loras (a full fine-tune: the model to models/diffusion_models) "
                        "and outputs the MODEL with it applied.",
            inputs=[
                *head_inputs(),
                widget(TrainConfig, "steps"),
                # this node trains with AdamW at a constant lr (the Advanced node has the schedule)
                widget(TrainConfig, "lr", round=False, tooltip="Learning rate (AdamW, constant)."),
                widget(TrainConfig, "batch_size", tooltip="Images per step (each batch comes from one aspect "
                                                          "bucket)."),
                widget(TrainConfig, "seed", control_after_generate=False),
                widget(SaveConfig, "every_n_steps", id="save_every_n_steps"),
                *tail_inputs(),
            ],
            outputs=outputs(),
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, lora_name) -> bool | str:
        return check_lora_name(lora_name)

    @classmethod
    def execute(cls, model, cache, adapter, lora_name: str, steps: int, lr: float, batch_size: int, seed: int,
                save_every_n_steps: int, validation=None, vae=None, resume_from: str = "", tracking=None,
                hub=None) -> io.NodeOutput:
        train = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed)
        save = SaveConfig(every_n_steps=save_every_n_steps)
        return run_training(cls, model, cache, adapter, lora_name, train, save, validation, vae, resume_from,
                            tracking=tracking, hub=hub)


class TrainLoRAAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_TrainLoRAAdvanced", display_name="Train Adapter or Full Model (Lumina2, Advanced)",
            category=CATEGORY,
            description="The Train node with every training and saving option: optimizer, schedule, warm-up, "
                        "timestep sampling and shift, loss weighting, caption dropout, EMA, precision, activation "
                        "checkpointing, save format and frequency. Same function as 'Train Adapter or Full Model'.",
            inputs=[*head_inputs(), *advanced_train_inputs(), *tail_inputs(), *added_inputs()],
            outputs=outputs(),
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, lora_name) -> bool | str:
        return check_lora_name(lora_name)

    @classmethod
    def execute(cls, model, cache, adapter, lora_name: str, validation=None, vae=None, resume_from: str = "",
                tracking=None, hub=None, **widgets) -> io.NodeOutput:
        train, save = train_from_widgets(widgets), save_from_widgets(widgets)
        return run_training(cls, model, cache, adapter, lora_name, train, save, validation, vae, resume_from,
                            tracking=tracking, hub=hub, model_cfg=model_from_widgets(widgets))


NODES = [TrainLoRA, TrainLoRAAdvanced]
