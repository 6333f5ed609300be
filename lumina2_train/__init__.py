"""comfyui-lumina2-train: the library. Importing it loads no ComfyUI module."""

__version__ = "0.1.0"
