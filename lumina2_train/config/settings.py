"""Where a setting is declared: `setting(default, help, choices=, min=, max=, ...)` on a config dataclass field.

Validation of choices and ranges (`setting_errors`), the node widgets' descriptions (`widget_spec`) and the docs'
option tables (config/docs.py) are all read from this metadata, so a default, range or choice list lives once.
No ComfyUI imports: nodes/_api.py turns a `widget_spec` into ComfyUI's input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .choices import _choice, _range

KEY = "lumina2t.setting"


@dataclass(frozen=True)
class Setting:
    """One setting's declaration. `min`/`max` are validated (inclusive); `widget_min`/`widget_max` only bound
    the node widget where the setting itself has no such limit (a widget needs one), and default to min/max."""

    help: str
    choices: tuple = ()  # allowed values; for a tuple setting, allowed items
    min: float | None = None
    max: float | None = None
    widget_min: float | None = None
    widget_max: float | None = None
    step: float | None = None  # the widget's increment

    @property
    def widget_range(self) -> tuple[float | None, float | None]:
        return (self.min if self.widget_min is None else self.widget_min,
                self.max if self.widget_max is None else self.widget_max)


def setting(default: Any, help: str, **declared: Any) -> Any:
    """A dataclass field with its default and its `Setting` (help, choices, range) in the field's metadata."""
    if "choices" in declared:
        declared["choices"] = tuple(declared["choices"])
    return dataclasses.field(default=default, metadata={KEY: Setting(help=help, **declared)})


def spec_of(cls: type, name: str) -> Setting:
    """The `Setting` of field `name` of config class `cls`; KeyError naming both when it has none."""
    for f in dataclasses.fields(cls):
        if f.name == name and KEY in f.metadata:
            return f.metadata[KEY]
    raise KeyError(f"{cls.__name__}.{name} is not a declared setting")


def declared_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that carry a `Setting`, in declaration order."""
    return [f for f in dataclasses.fields(cls) if KEY in f.metadata]


def setting_errors(obj: Any, at: str) -> list[str]:
    """Every value of the section `obj` outside its field's declared choices or range, by dotted field path.

    One walk over the declarations (like nonfinite_errors), so a setting added with choices or a range is
    checked without a line of its own; each message names the field, the value found and what is allowed.
    """
    out: list[str] = []
    for f in declared_fields(type(obj)):
        spec, value, where = f.metadata[KEY], getattr(obj, f.name), f"{at}.{f.name}"
        items = value if isinstance(value, tuple) else (value,)
        if spec.choices:
            out += [e for item in items for e in _choice(where, item, spec.choices)]
        if spec.min is not None or spec.max is not None:
            out += [e for item in items for e in _range(where, item, spec.min, spec.max)]
    return out


_KINDS = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}


def widget_spec(cls: type, name: str, *, id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A plain description of the node widget for setting `name` of `cls` (no ComfyUI): kind (INT, FLOAT,
    COMBO, BOOLEAN, STRING), id, default, min, max, step, options, tooltip. Keys are left out where they do not
    apply. `overrides` (options, default, tooltip) replace a declared value: node-only exceptions, kept rare."""
    unknown = set(overrides) - {"options", "default", "tooltip"}
    if unknown:
        raise TypeError(f"widget_spec: {', '.join(sorted(unknown))} cannot be overridden")
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    spec = spec_of(cls, name)
    if isinstance(f.default, tuple):
        raise TypeError(f"{cls.__name__}.{name} is a list setting: it has no single widget; write the node's own")
    kind = "COMBO" if spec.choices else _KINDS[type(f.default)]
    out: dict[str, Any] = {"kind": kind, "id": id or name, "default": f.default, "tooltip": spec.help}
    if kind == "COMBO":
        out["options"] = list(spec.choices)
    if kind in ("INT", "FLOAT"):
        lo, hi = spec.widget_range
        out |= {k: v for k, v in (("min", lo), ("max", hi), ("step", spec.step)) if v is not None}
    if "options" in overrides:
        overrides["options"] = list(overrides["options"])
    return out | overrides


def defaults_of(cls: type) -> dict[str, Any]:
    """field name -> default of every field of `cls` (nested sections as their own dicts)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = defaults_of(type(value)) if dataclasses.is_dataclass(value) else value
    return out
