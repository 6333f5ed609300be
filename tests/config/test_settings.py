"""Each setting is declared once (config/settings.py): the widgets' descriptions, validation and docs/settings.md
agree with the declarations, and every default is the one the previous release shipped."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from lumina2_train.config import docs
from lumina2_train.config.settings import KEY, declared_fields, setting_errors, spec_of, widget_spec

REPO = Path(__file__).resolve().parents[2]
SECTIONS = [cls for _, cls in docs.SECTIONS]
# the node-only overrides of widget(...) calls in nodes/: (file, field, override) - keep this list short
OVERRIDES = {
    ("train.py", "lr", "tooltip"),  # the simple node trains with AdamW at a constant lr
    ("train.py", "batch_size", "tooltip"),  # the simple node has no grad_accum: a micro-step is a step
    ("train_options.py", "format", "options"),  # diffusers files are exported with Save Adapter
    ("train_options.py", "format", "tooltip"),
    ("dataset.py", "path", "tooltip"),  # ComfyUI's input folder
    ("dataset.py", "mask_folder", "tooltip"),
    ("validation.py", "prompt_library", "tooltip"),
}


def test_docs_settings_md_is_generated_from_the_declarations():
    assert docs.PATH == REPO / "docs" / "settings.md"
    assert docs.PATH.read_text(encoding="utf-8") == docs.render(), \
        "docs/settings.md is out of date: run python -m lumina2_train.config.docs"


def test_every_setting_is_declared_with_help():
    for cls in SECTIONS:
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name in ("datasets",) or "Config" in str(f.type):
                continue
            assert KEY in f.metadata, f"{cls.__name__}.{f.name} has no setting(...) declaration"
            assert spec_of(cls, f.name).help.strip(), f"{cls.__name__}.{f.name} has no help"


def test_every_default_is_unchanged():
    pinned = json.loads((REPO / "tests" / "fixtures" / "config_defaults.json").read_text(encoding="utf-8"))
    now = {cls.__name__: {f.name: repr(getattr(cls(), f.name)) for f in dataclasses.fields(cls)}
           for cls in [*SECTIONS]}
    assert {k: now[k] for k in pinned} == pinned


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_each_widget_description_equals_its_declaration(cls):
    for f in declared_fields(cls):
        if isinstance(f.default, tuple):  # a list setting: its nodes write their own widgets (tests/comfy)
            continue
        spec, w = spec_of(cls, f.name), widget_spec(cls, f.name)
        assert (w["id"], w["default"], w["tooltip"]) == (f.name, f.default, spec.help)
        if spec.choices:
            assert (w["kind"], w["options"]) == ("COMBO", list(spec.choices))
            assert f.default in spec.choices, f"{cls.__name__}.{f.name}: default not among its choices"
        if w["kind"] in ("INT", "FLOAT"):
            lo, hi = spec.widget_range
            assert (w.get("min"), w.get("max"), w.get("step")) == (lo, hi, spec.step)
            # a widget never offers a value validation refuses, and holds the default
            assert spec.min is None or (lo is not None and lo >= spec.min), f"{cls.__name__}.{f.name}"
            assert spec.max is None or (hi is not None and hi <= spec.max), f"{cls.__name__}.{f.name}"
            assert (lo is None or lo <= f.default) and (hi is None or f.default <= hi), f"{cls.__name__}.{f.name}"
    assert setting_errors(cls(), "x") == [], "a default is outside its own declaration"


def test_out_of_range_and_unknown_choices_name_the_field_the_value_and_the_fix():
    from lumina2_train.config import AdapterConfig, DatasetConfig, TrackingConfig, TrainConfig

    assert setting_errors(TrainConfig(lr=2.0, optimizer="sgd"), "train") == [
        "train.lr must be between 0.0 and 1.0 (got 2.0)",
        "train.optimizer 'sgd' is unknown; choose one of " + ", ".join(spec_of(TrainConfig, "optimizer").choices)]
    assert DatasetConfig(path="d", repeats=0).errors("data.datasets[0]") == \
        ["data.datasets[0].repeats must be >= 1 (got 0)"]
    assert AdapterConfig(targets=("attention", "mlp")).errors("adapter")[0] == \
        "adapter.targets 'mlp' is unknown; choose one of attention, ffn, adaln, final, embedders"
    assert TrackingConfig(report_to=("tb",)).errors("tracking")[0].startswith("tracking.report_to 'tb' is unknown")


def _widget_calls():
    for path in sorted((REPO / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "widget":
                yield path.name, node


def test_node_widgets_name_declared_settings_and_overrides_are_the_listed_few():
    import lumina2_train.config as config

    seen = set()
    for file, call in _widget_calls():
        cls_node, name_node = call.args[0], call.args[1]
        if not isinstance(name_node, ast.Constant):  # widget(Cls, n) in a comprehension over literal names
            continue
        spec_of(getattr(config, cls_node.id), name_node.value)  # KeyError when not declared
        for kw in call.keywords:
            if kw.arg in ("options", "default", "tooltip"):
                seen.add((file, name_node.value, kw.arg))
    assert seen == OVERRIDES
