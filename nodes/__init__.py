"""The pack's V3 nodes, one file per stage; `Lumina2TrainExtension` lists them for ComfyUI.

Imported by the pack's `__init__.py` inside `comfy_entrypoint()`. Every import here is relative: this folder is
named `nodes`, like ComfyUI's own `nodes` module.
"""

from __future__ import annotations

from . import adapter, cache, dataset, dev, save, tracking, train, validation
from ._api import ComfyExtension, io

NODES: list[type[io.ComfyNode]] = [*dataset.NODES, *cache.NODES, *adapter.NODES, *validation.NODES, *tracking.NODES,
                                   *train.NODES, *save.NODES, *dev.NODES]


class Lumina2TrainExtension(ComfyExtension):
    async def on_load(self) -> None:  # newer ComfyUI calls it; comfy_entrypoint registers the route for older ones
        register_routes()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


def register_routes() -> bool:
    """GET /lumina2t/history for the live loss chart (lumina2_train/comfyui/jobs.py)."""
    from ..lumina2_train.comfyui.jobs import register_routes as register

    return register()


__all__ = ["NODES", "Lumina2TrainExtension", "register_routes"]
