"""1 Data: Load Dataset (a folder) and Dataset from Images (IMAGE batches + captions) -> LUMINA2T_DATASET."""

from __future__ import annotations

from ..lumina2_train.comfyui import data as comfy_data
from ..lumina2_train.config import (
    BUCKET_STEPS,
    CAPTION_POLICIES,
    CAPTION_STRATEGIES,
    CROP_ASPECTS,
    CROP_STYLES,
    DUPLICATE_POLICIES,
    FILE_POLICIES,
    RESOLUTION_TYPES,
    DataConfig,
    DatasetConfig,
    from_dict,
)
from . import types
from ._api import advanced, io, ui

CATEGORY = "Lumina2 Trainer/1 Data"
_D = DatasetConfig()


def bucket_inputs() -> list[io.Input]:
    """Resolution and bucket widgets shared by both dataset nodes (ids = DatasetConfig fields)."""
    return [
        io.Int.Input("resolution", default=_D.resolution, min=64, max=4096, step=16,
                     tooltip="Training resolution. With pixel_area, each bucket holds about resolution² pixels at "
                             "the image's aspect ratio (1024 = ~1 MP, Lumina2's native size)."),
        io.Combo.Input("resolution_type", options=list(RESOLUTION_TYPES), default=_D.resolution_type,
                       tooltip="pixel_area: constant pixel count per bucket. shortest_side: the short side equals "
                               "the resolution."),
        io.Combo.Input("bucket_step_px", options=list(BUCKET_STEPS), default=_D.bucket_step_px,
                       tooltip="Bucket sides are multiples of this (16 = VAE 1/8 x patch 2, the finest Lumina2 "
                               "allows). Larger steps make fewer buckets."),
        io.Combo.Input("crop_style", options=list(CROP_STYLES), default=_D.crop_style,
                       tooltip="How an image is cropped to its bucket after resizing: center, random (fixed per "
                               "image by the seed) or none (resized to the bucket, aspect slightly changed)."),
        io.Combo.Input("crop_aspect", options=list(CROP_ASPECTS), default=_D.crop_aspect,
                       tooltip="preserve: buckets follow each image's aspect ratio. square: every image is cropped "
                               "square."),
        io.Boolean.Input("flip", default=_D.flip,
                         tooltip="Also cache each image mirrored and train on either at random (avoid for text or "
                                 "asymmetric subjects)."),
        io.Int.Input("repeats", default=_D.repeats, min=1, max=10000,
                     tooltip="How many times each image counts per epoch (weights this dataset)."),
        io.Int.Input("seed", default=DataConfig().seed, min=0, max=2**31 - 1, control_after_generate=False,
                     tooltip="Seed of the scan's random choices (random crops, tag shuffles)."),
    ]


def file_inputs() -> list[io.Input]:
    """Advanced, optional widgets for the folder scan (ids = DatasetConfig fields; optional so that prompts saved
    before they existed still run, with the library's defaults)."""
    return [advanced(w) for w in (
        io.Boolean.Input("recursive", default=_D.recursive, optional=True,
                         tooltip="Also read images in sub-folders."),
        io.Int.Input("max_size_px", default=_D.max_size_px, min=0, max=16384, optional=True,
                     tooltip="Images whose long side is larger are downsampled before bucketing (0 = no limit)."),
        io.Int.Input("target_downsample_px", default=_D.target_downsample_px, min=0, max=16384, optional=True,
                     tooltip="The long side after that downsample (0 = max_size_px)."),
        io.Combo.Input("empty_caption", options=list(CAPTION_POLICIES), default=_D.empty_caption, optional=True,
                       tooltip="A caption that is empty: stop with an error, skip the image, or train it with an "
                               "empty caption."),
        io.Combo.Input("invalid_caption", options=list(FILE_POLICIES), default=_D.invalid_caption, optional=True,
                       tooltip="A caption file that is not UTF-8 or cannot be read: error or skip (reported)."),
        io.Combo.Input("duplicate_stem", options=list(DUPLICATE_POLICIES), default=_D.duplicate_stem, optional=True,
                       tooltip="Images sharing one caption file (a.png and a.jpg): error, skip both, or keep both "
                               "with that caption."),
        io.Combo.Input("bad_image", options=list(FILE_POLICIES), default=_D.bad_image, optional=True,
                       tooltip="Zero-byte, truncated or unreadable images: error or skip (reported either way)."),
        io.String.Input("background", default=_D.background, optional=True,
                        tooltip="Colour transparent pixels are composited on: a name or #rrggbb."),
        io.Combo.Input("missing_mask", options=list(FILE_POLICIES), default=_D.missing_mask, optional=True,
                       tooltip="With mask_strategy 'folder': an image without a mask file: error or skip."),
        # added after the previous release: last, so a saved workflow's widget values keep their places
        io.Int.Input("max_image_pixels", default=_D.max_image_pixels, min=0, max=2**31 - 1, optional=True,
                     tooltip="Images with more pixels are refused before decoding (bad_image policy; 0 = Pillow's "
                             "own limit)."),
    )]


class LoadDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_LoadDataset", display_name="Load Dataset (Lumina2)", category=CATEGORY,
            description="Scans a folder of images and captions into aspect buckets without loading a model, and "
                        "shows the report (used, skipped and why, buckets). Feeds 'Cache Latents & Text'.",
            inputs=[
                io.String.Input("folder", default="",
                                tooltip="Folder of images (png, jpg, webp, bmp), absolute or relative to ComfyUI's "
                                        "input folder. Sub-folders are included."),
                io.Combo.Input("caption_strategy", options=list(CAPTION_STRATEGIES), default=_D.caption_strategy,
                               tooltip="textfile: a caption file with the image's name. filename: the file name is "
                                       "the caption. jsonl/csv: a metadata file with path and caption columns. "
                                       "instance: one prompt for every image."),
                io.String.Input("caption_extension", default=_D.caption_extension,
                                tooltip="Extension of the caption files for 'textfile' (e.g. .txt or .caption)."),
                io.String.Input("metadata_file", default="",
                                tooltip="For jsonl/csv: the metadata file, looked up in the dataset folder first."),
                io.String.Input("instance_prompt", default="", multiline=True,
                                tooltip="For 'instance': the caption of every image (e.g. 'a photo of sks dog')."),
                io.Combo.Input("missing_caption", options=list(CAPTION_POLICIES), default=_D.missing_caption,
                               tooltip="An image without a caption: error (stop at caching), skip it, or train it "
                                       "with an empty caption."),
                io.Boolean.Input("shuffle_tags", default=_D.shuffle_tags,
                                 tooltip="Shuffle comma-separated tags in each caption (booru-style captions)."),
                io.Int.Input("keep_tags", default=_D.keep_tags, min=0, max=100,
                             tooltip="With shuffle_tags: keep the first N tags in place."),
                *bucket_inputs(),
                io.Int.Input("min_size_px", default=_D.min_size_px, min=0, max=4096,
                             tooltip="Skip images whose short side is smaller than this (reported)."),
                io.Float.Input("max_aspect_ratio", default=_D.max_aspect_ratio, min=1.0, max=16.0, step=0.1,
                               tooltip="Skip images whose long/short side ratio is above this (reported)."),
                io.Combo.Input("mask_strategy", options=["none", "alpha", "folder"], default=_D.mask_strategy,
                               tooltip="Masked loss: 'alpha' uses each image's transparency, 'folder' a mask image "
                                       "with the same name in mask_folder (white trains, black is ignored)."),
                io.String.Input("mask_folder", default="",
                                tooltip="For mask_strategy 'folder': the masks, absolute or relative to ComfyUI's "
                                        "input folder."),
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
