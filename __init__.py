"""ComfyUI entry point of comfyui-lumina2-train: V3 nodes (nodes/) and the web folder (web/: loss chart, reports).

Import-light on purpose: nodes/ and the library load inside comfy_entrypoint(), when ComfyUI asks for them.
Every import is relative (this pack's `nodes/` would otherwise collide with ComfyUI's `nodes` module).
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import Lumina2TrainExtension, register_routes

    register_routes()
    return Lumina2TrainExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
