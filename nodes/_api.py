"""The only import of ComfyUI's node API (`comfy_api`) in the pack: version differences are handled here.

Feature detection only (never a version comparison): `comfy_api.latest` where it exists, else the pinned
`v0_0_2`. Inputs' `advanced=True` (collapsed "advanced" widgets) exists only in newer ComfyUI; `advanced()`
sets it where the running ComfyUI's input classes accept it and drops it elsewhere.
"""

from __future__ import annotations

import inspect

from ..lumina2_train.config.settings import widget_spec

try:
    from comfy_api.latest import ComfyExtension, io, ui
except ImportError:  # a ComfyUI that has retired `latest`
    from comfy_api.v0_0_2 import ComfyExtension, io, ui


def _accepts(input_cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(input_cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def advanced(widget: io.Input) -> io.Input:
    """Mark a widget input as advanced (collapsed by default) where this ComfyUI supports it; else unchanged."""
    if _accepts(type(widget), "advanced") or hasattr(widget, "advanced"):
        widget.advanced = True
    return widget


_INPUTS = {"INT": io.Int.Input, "FLOAT": io.Float.Input, "COMBO": io.Combo.Input, "BOOLEAN": io.Boolean.Input,
           "STRING": io.String.Input}


def widget(cls: type, name: str, *, id: str | None = None, options=None, default=None, tooltip: str | None = None,
           **comfy_kwargs) -> io.Input:
    """The widget of setting `name` of config class `cls`: default, range, step, options and tooltip come from the
    field's declaration (config/settings.py, `widget_spec`). `options` / `default` / `tooltip` are node-only
    overrides (rare); `comfy_kwargs` are display options of ComfyUI's input (optional, multiline, round, ...)."""
    overrides = {k: v for k, v in (("options", options), ("default", default), ("tooltip", tooltip)) if v is not None}
    spec = widget_spec(cls, name, id=id, **overrides)
    kind, input_id = spec.pop("kind"), spec.pop("id")
    return _INPUTS[kind](input_id, **spec, **comfy_kwargs)


__all__ = ["ComfyExtension", "advanced", "io", "ui", "widget"]
