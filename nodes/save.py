"""4 Use: Save Adapter (other formats / another place) and Plot Loss (an IMAGE)."""

from __future__ import annotations

from ..lumina2_train.comfyui import train as comfy_run
from ..lumina2_train.config import SaveConfig
from ._api import io, ui, widget

CATEGORY = "Lumina2 Trainer/4 Use"


class SaveLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_SaveLoRA", display_name="Save Adapter (Lumina2)", category=CATEGORY,
            description="Writes a LORA_MODEL (the Train node's 'lora') as a ComfyUI, kohya or diffusers file, under "
                        "models/loras or output/lumina2_train/loras. The Train node already saved a ComfyUI file; "
                        "use this for another format or a copy. A full fine-tune's 'lora' holds .diff patches: "
                        "they save as a full-rank LoRA file (as large as the trained weights) that LoRA loaders "
                        "apply at any strength; the model itself is already in models/diffusion_models.",
            inputs=[
                io.LoraModel.Input("lora", tooltip="The Train node's 'lora' output (or any LORA_MODEL)."),
                io.String.Input("name", default="lumina2_lora_export",
                                tooltip="File name (a subfolder is allowed); an existing file is never overwritten."),
                widget(SaveConfig, "format"),
                widget(SaveConfig, "dtype"),
                io.Combo.Input("destination", options=["loras", "output"], default="loras",
                               tooltip="loras: models/loras (listed by the LoRA loaders). output: "
                                       "output/lumina2_train/loras (e.g. for diffusers files)."),
            ],
            outputs=[io.String.Output("path", display_name="path", tooltip="Path of the written file.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora, name: str, format: str, dtype: str, destination: str) -> io.NodeOutput:
        path = comfy_run.save_lora_file(lora, name, fmt=format, dtype=dtype, destination=destination)
        return io.NodeOutput(str(path), ui=ui.PreviewText(str(path)))


class PlotLoss(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_PlotLoss", display_name="Plot Loss (Lumina2)", category=CATEGORY,
            description="Draws the loss per step (raw and smoothed) as an IMAGE, from the Train node's 'loss' "
                        "(or ComfyUI's own trainer's LOSS_MAP).",
            inputs=[
                io.LossMap.Input("loss", tooltip="The Train node's 'loss' output."),
                io.Boolean.Input("log_scale", default=False, tooltip="Logarithmic loss axis."),
                io.Int.Input("width", default=720, min=200, max=4096, tooltip="Image width in px."),
                io.Int.Input("height", default=400, min=150, max=4096, tooltip="Image height in px."),
            ],
            outputs=[io.Image.Output("image", display_name="image",
                                     tooltip="The chart, for Save Image or Preview Image.")],
        )

    @classmethod
    def execute(cls, loss, log_scale: bool, width: int, height: int) -> io.NodeOutput:
        image = comfy_run.loss_image(loss, log_scale=log_scale, width=width, height=height)
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


NODES = [SaveLoRA, PlotLoss]
