"""3 Train: Tracking Settings -> LUMINA2T_TRACKING and Hub Upload Settings -> LUMINA2T_HUB (optional inputs of
both Train nodes; the CLI's tracking.* and hub.* settings)."""

from __future__ import annotations

from ..lumina2_train.config import REPORT_TO, HubConfig, TrackingConfig
from . import types
from ._api import io
from .adapter import CATEGORY, check_config

_TR = TrackingConfig()
_H = HubConfig()
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
                io.String.Input("project", default=_TR.project, tooltip="W&B project name."),
                io.String.Input("run_name", default=_TR.run_name,
                                tooltip="Run name shown by the tracker; empty = the run folder's name."),
                io.Int.Input("log_every_n_steps", default=_TR.log_every_n_steps, min=1, max=1_000_000,
                             tooltip="Log the step scalars every N optimizer steps (and at the last step)."),
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
                io.String.Input("model_id", default=_H.model_id,
                                tooltip="The repository: 'user/name', or 'name' under your account. Created if "
                                        "missing."),
                io.Boolean.Input("push", default=_H.push,
                                 tooltip="Upload after training. The files are always written locally first; if the "
                                         "upload fails (offline, no login) the Train node fails with the command "
                                         "that uploads them later."),
                io.Boolean.Input("push_checkpoints", default=_H.push_checkpoints,
                                 tooltip="Also upload each intermediate checkpoint and file as it is saved (needs "
                                         "push; a failed intermediate upload only logs a warning)."),
                io.Boolean.Input("private", default=_H.private, tooltip="Create the repository as private."),
            ],
            outputs=[types.Hub.Output("hub", display_name="hub", tooltip="For the Train node's 'hub' input.")],
        )

    @classmethod
    def execute(cls, model_id: str, push: bool, push_checkpoints: bool, private: bool) -> io.NodeOutput:
        cfg = HubConfig(push=push, push_checkpoints=push_checkpoints, model_id=model_id.strip(), private=private)
        return io.NodeOutput(check_config(cfg, "hub"))


NODES = [ConfigureTracking, ConfigureHub]
