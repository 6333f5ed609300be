"""docs/settings.md: the table of every setting, generated from the fields' declarations (config/settings.py).

`python -m lumina2_train.config.docs` rewrites the file; `--check` exits 1 when it differs from the declarations
(tests/config/test_settings.py runs the same comparison). No ComfyUI imports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data import CacheConfig, DataConfig, DatasetConfig
from .model import AdapterConfig, ModelConfig
from .outputs import HubConfig, SaveConfig, TrackingConfig, ValidationConfig
from .run import RunConfig
from .settings import declared_fields, spec_of
from .train import TrainConfig

PATH = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
SECTIONS = (("(top level)", RunConfig), ("data", DataConfig), ("data.datasets[]", DatasetConfig),
            ("model", ModelConfig), ("cache", CacheConfig), ("adapter", AdapterConfig), ("train", TrainConfig),
            ("validation", ValidationConfig), ("save", SaveConfig), ("tracking", TrackingConfig),
            ("hub", HubConfig))
HEADER = """# Settings

Every setting of a run config (TOML/JSON for the CLI, `docs/cli.md`; the same names on the nodes' widgets,
`docs/nodes.md`): its default, the values it accepts and what it does. Generated from the config dataclasses'
field declarations (`lumina2_train/config/settings.py`) by `python -m lumina2_train.config.docs`; do not edit
by hand (`tests/config/test_settings.py` fails when this file and the declarations differ).
"""


def _value(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return f"{v:g}" if isinstance(v, float) else str(v)


def _accepts(spec) -> str:
    if spec.choices:
        return ", ".join(f"`{c}`" for c in spec.choices)
    if spec.min is not None and spec.max is not None:
        return f"{_value(spec.min)} to {_value(spec.max)}"
    if spec.min is not None:
        return f"≥ {_value(spec.min)}"
    return f"≤ {_value(spec.max)}" if spec.max is not None else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_table(cls: type) -> str:
    """The markdown table of `cls`'s declared settings: setting, default, accepts, meaning."""
    rows = ["| setting | default | accepts | meaning |", "|---|---|---|---|"]
    for f in declared_fields(cls):
        spec = spec_of(cls, f.name)
        rows.append(f"| `{f.name}` | `{_value(f.default)}` | {_cell(_accepts(spec))} | {_cell(spec.help)} |")
    return "\n".join(rows)


def render() -> str:
    """The whole of docs/settings.md."""
    parts = [HEADER]
    for title, cls in SECTIONS:
        parts.append(f"## {title}\n\n{section_table(cls)}\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/settings.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = PATH.is_file() and PATH.read_text(encoding="utf-8") == text
        if not same:
            sys.stderr.write(f"{PATH} is out of date; run python -m lumina2_train.config.docs\n")
        return 0 if same else 1
    PATH.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
