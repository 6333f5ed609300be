"""1 Data: Load Dataset (a folder) and Dataset from Images (IMAGE batches + captions) -> LUMINA2T_DATASET."""

from __future__ import annotations

from ..lumina2_train.comfyui import data as comfy_data
from ..lumina2_train.config import DataConfig, DatasetConfig, from_dict
from . import types
from ._api import advanced, io, ui, widget

CATEGORY = "Lumina2 Trainer/1 Data"


def bucket_inputs() -> list[io.Input]:
    """Resolution and bucket widgets shared by both dataset nodes (ids = DatasetConfig fields)."""
    names = ("resolution", "resolution_type", "bucket_step_px", "crop_style", "crop_aspect", "flip", "repeats")
    return [*[widget(DatasetConfig, n) for n in names],
            widget(DataConfig, "seed", control_after_generate=False)]


def file_inputs() -> list[io.Input]:
    """Advanced, optional widgets for the folder scan (ids = DatasetConfig fields; optional so that prompts saved
    before they existed still run, with the library's defaults)."""
    # max_image_pixels came after the previous release: last, so a saved workflow's widget values keep their places
    names = ("recursive", "max_size_px", "target_downsample_px", "empty_caption", "invalid_caption",
             "duplicate_stem", "bad_image", "background", "missing_mask", "max_image_pixels")
    return [advanced(widget(DatasetConfig, n, optional=True)) for n in names]


class LoadDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_LoadDataset", display_name="Load Dataset (Lumina2)", category=CATEGORY,
            description="Scans a folder of images and captions into aspect buckets without loading a model, and "
                        "shows the report (used, skipped and why, buckets). Feeds 'Cache Latents & Text'.",
            inputs=[
                widget(DatasetConfig, "path", id="folder",
                       tooltip="Folder of images (png, jpg, webp, bmp), absolute or relative to ComfyUI's input "
                               "folder. Sub-folders are included."),
                *[widget(DatasetConfig, n) for n in ("caption_strategy", "caption_extension", "metadata_file")],
                widget(DatasetConfig, "instance_prompt", multiline=True),
                *[widget(DatasetConfig, n) for n in ("missing_caption", "shuffle_tags", "keep_tags")],
                *bucket_inputs(),
                *[widget(DatasetConfig, n) for n in ("min_size_px", "max_aspect_ratio", "mask_strategy")],
                widget(DatasetConfig, "mask_folder",
                       tooltip="For mask_strategy 'folder': the masks, absolute or relative to ComfyUI's input "
                               "folder."),
                *file_inputs(),
            ],
            outputs=[types.Dataset.Output("dataset", display_name="dataset",
                                          tooltip="The scanned dataset, for 'Cache Latents & Text'."),
                     io.String.Output("report", display_name="report", tooltip="The scan report as text.")],
        )

    @classmethod
    def validate_inputs(cls, folder) -> bool | str:
        """Checked when the prompt is queued: the folder exists (a linked value is checked at run time)."""
        if not isinstance(folder, str) or (folder.strip() and comfy_data.input_folder(folder).is_dir()):
            return True
        return f"folder '{folder}': no such folder. Give a folder of images, absolute or relative to ComfyUI's input " \
               "folder"

    @classmethod
    def fingerprint_inputs(cls, folder: str, metadata_file: str = "", mask_folder: str = "", **_widgets) -> str:
        """Re-run when a file in the folder (or the masks / metadata file) changes; settings are compared anyway."""
        paths = [comfy_data.input_folder(p) for p in (folder, mask_folder) if p.strip()]
        if metadata_file.strip() and paths:
            paths.append(paths[0] / metadata_file)
        return comfy_data.folder_fingerprint(*paths)

    @classmethod
    def execute(cls, folder: str, seed: int, **widgets) -> io.NodeOutput:
        ds = from_dict(DatasetConfig, {"path": folder, **widgets})
        handle = comfy_data.scan_folder_dataset(ds, seed)
        text = handle.report.as_text()
        return io.NodeOutput(handle, text, ui=ui.PreviewText(text))


class LoadImageDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_LoadImageDataset", display_name="Dataset from Images (Lumina2)", category=CATEGORY,
            description="Makes a dataset from IMAGE batches and captions coming from other nodes (loaders, "
                        "captioners, lists). The images are written once to ComfyUI's temp folder and scanned like a "
                        "folder. Feeds 'Cache Latents & Text'.",
            inputs=[
                io.Image.Input("images", tooltip="One or more IMAGE batches; a list of batches of different sizes "
                                                 "is fine."),
                io.String.Input("captions", default="", multiline=True,
                                tooltip="One caption per image: a list of strings, or one text with a line per "
                                        "image, or a single caption for all images."),
                *bucket_inputs(),
            ],
            outputs=[types.Dataset.Output("dataset", display_name="dataset",
                                          tooltip="The dataset, for 'Cache Latents & Text'."),
                     io.String.Output("report", display_name="report", tooltip="The scan report as text.")],
            is_input_list=True,
        )

    @classmethod
    def execute(cls, images: list, captions: list, seed: list, **widgets) -> io.NodeOutput:
        ds = from_dict(DatasetConfig, {"path": "images", **{k: v[0] for k, v in widgets.items()}})
        handle = comfy_data.image_set_dataset(images, captions, ds, seed[0])
        text = handle.report.as_text()
        return io.NodeOutput(handle, text, ui=ui.PreviewText(text))


NODES = [LoadDataset, LoadImageDataset]
