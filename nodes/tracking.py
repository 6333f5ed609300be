"""3 Train: Tracking Settings -> LUMINA2T_TRACKING and Hub Upload Settings -> LUMINA2T_HUB (optional inputs of
both Train nodes; the CLI's tracking.* and hub.* settings)."""

from __future__ import annotations

from ..lumina2_train.config import REPORT_TO, HubConfig, TrackingConfig
from . import types
from ._api import io, widget
from .adapter import CATEGORY, check_config

_TR = TrackingConfig()
BOTH = "tensorboard+wandb"


class ConfigureTracking(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_ConfigureTracking", display_name="Tracking Settings (Lumina2)", category=CATEGORY,
            description="Log the loss, learning rate, noise level, validation images and held-out losses to "
                        "TensorBoard and/or Weights & Biases, in the run folder's logs/. Connect it to the Train "
                        "node's 'tracking' input.",
            inputs=[
                io.Combo.Input("report_to", options=[*REPORT_TO, BOTH], default="tensorboard",
                               tooltip="tensorboard (pip install tensorboard), wandb (pip install wandb; offline "
                                       "when its server cannot be reached: upload later with `wandb sync`), both, "
                                       "or none. A missing package fails the Train node before any model loads."),
                *[widget(TrackingConfig, n) for n in ("project", "run_name", "log_every_n_steps")],
            ],
            outputs=[types.Tracking.Output("tracking", display_name="tracking",
                                           tooltip="For the Train node's 'tracking' input.")],
        )

    @classmethod
    def execute(cls, report_to: str, project: str, run_name: str, log_every_n_steps: int) -> io.NodeOutput:
        chosen = ("tensorboard", "wandb") if report_to == BOTH else (report_to,)
        cfg = TrackingConfig(report_to=chosen, project=project.strip() or _TR.project, run_name=run_name.strip(),
                             log_every_n_steps=log_every_n_steps)
        return io.NodeOutput(check_config(cfg, "tracking"))


class ConfigureHub(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_ConfigureHub", display_name="Hub Upload Settings (Lumina2)", category=CATEGORY,
            description="Upload the trained file, a model card (README.md), the samples and the config to a "
                        "Hugging Face Hub repository after training. Needs a login on the ComfyUI machine (`hf auth "
                        "login` or HF_TOKEN). Connect it to the Train node's 'hub' input.",
            inputs=[
                *[widget(HubConfig, n) for n in ("model_id", "push", "push_checkpoints", "private")],
            ],
            outputs=[types.Hub.Output("hub", display_name="hub", tooltip="For the Train node's 'hub' input.")],
        )

    @classmethod
    def execute(cls, model_id: str, push: bool, push_checkpoints: bool, private: bool) -> io.NodeOutput:
        cfg = HubConfig(push=push, push_checkpoints=push_checkpoints, model_id=model_id.strip(), private=private)
        return io.NodeOutput(check_config(cfg, "hub"))


NODES = [ConfigureTracking, ConfigureHub]
