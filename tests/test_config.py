"""The typed config: every error names its dotted field; dict round trips; unknown keys are refused."""

import json

import pytest

from lumina2_train.config import (
    AdapterConfig,
    DataConfig,
    DatasetConfig,
    RunConfig,
    TrainConfig,
    ValidationConfig,
    load_run_config,
)
from lumina2_train.errors import ConfigError


def _cfg(**kw):
    return RunConfig(data=DataConfig(datasets=(DatasetConfig(path="/data"),)), **kw)


def test_defaults_validate():
    assert _cfg().validate()


def test_every_error_is_reported_at_once_with_its_field_path():
    cfg = _cfg(adapter=AdapterConfig(rank=0, kind="nope"), train=TrainConfig(lr=-1.0, optimizer="sgdx"),
               validation=ValidationConfig(width=100))
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    msg = str(e.value)
    for field in ("adapter.rank", "adapter.kind", "train.lr", "train.optimizer", "validation.width"):
        assert field in msg
    assert len(e.value.problems) == 5


def test_dataset_errors_name_the_dataset_index():
    cfg = RunConfig(data=DataConfig(datasets=(DatasetConfig(path="/a"),
                                              DatasetConfig(path="/b", caption_strategy="instance"))))
    with pytest.raises(ConfigError, match=r"data.datasets\[1\].instance_prompt"):
        cfg.validate()
    with pytest.raises(ConfigError, match="data.datasets is empty"):
        RunConfig().validate()


def test_dict_round_trip_is_exact():
    cfg = _cfg(adapter=AdapterConfig(targets=("attention", "ffn"), blocks="0-3"),
               validation=ValidationConfig(prompts=("a", "b")), train=TrainConfig(betas=(0.9, 0.95)))
    d = cfg.to_dict()
    assert RunConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_unknown_and_mistyped_keys_name_the_path():
    with pytest.raises(ConfigError, match=r"train.learning_rate is not a known setting"):
        RunConfig.from_dict({"train": {"learning_rate": 1e-4}})
    with pytest.raises(ConfigError, match=r"train.steps must be int \(got 'ten'\)"):
        RunConfig.from_dict({"train": {"steps": "ten"}})


def test_toml_file_with_relative_paths(tmp_path):
    (tmp_path / "cfg.toml").write_text(
        '[[data.datasets]]\npath = "imgs"\n[train]\nsteps = 5\n[model]\nvae = "m/vae"\n', encoding="utf-8")
    cfg = load_run_config(tmp_path / "cfg.toml")
    assert cfg.data.datasets[0].path == str((tmp_path / "imgs").resolve())
    assert cfg.model.vae == str((tmp_path / "m" / "vae").resolve()) and cfg.train.steps == 5
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "missing.toml")
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_run_config(tmp_path / "bad.json")


@pytest.mark.parametrize(("adapter", "what"), [(AdapterConfig(kind="loha"), "LoHa"), (AdapterConfig(kind="lokr"), "LoKr"),
                                               (AdapterConfig(use_dora=True), "DoRA")])
def test_lycoris_and_dora_need_the_comfyui_format_before_training(adapter, what):
    from lumina2_train.config import SaveConfig

    with pytest.raises(ConfigError, match=f"save.format 'kohya' cannot hold a {what} adapter"):
        _cfg(adapter=adapter, save=SaveConfig(format="kohya")).validate()
    _cfg(adapter=adapter).validate()
    _cfg(adapter=AdapterConfig(kind="full", targets=()), save=SaveConfig(format="kohya")).validate()  # a model file


def test_a_full_fine_tune_cannot_start_from_an_adapter_file():
    with pytest.raises(ConfigError, match="adapter.init_from is set but kind is 'full'"):
        _cfg(adapter=AdapterConfig(kind="full", init_from="x.safetensors")).validate()
    # said once (the check was written twice and listed the same problem twice)
    errors = _cfg(adapter=AdapterConfig(kind="full", init_from="x.safetensors")).errors()
    assert sum("init_from" in e for e in errors) == 1, errors


def _float_paths(obj, at=""):
    """(dotted path, setter) for every float setting of a dataclass tree, found from the fields themselves."""
    import dataclasses

    out = []
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), f"{at}.{f.name}" if at else f.name

        def put(new, _f=f.name, _obj=obj):
            return dataclasses.replace(_obj, **{_f: new})

        if dataclasses.is_dataclass(value):
            out += [(p, lambda v, s=s, put=put, value=value: put(s(v))) for p, s in _float_paths(value, path)]
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            out += [(p, lambda v, s=s, put=put, value=value: put((s(v),) + value[1:]))
                    for p, s in _float_paths(value[0], f"{path}[0]")]
        elif isinstance(value, tuple) and value and isinstance(value[0], float):
            out.append((f"{path}[0]", lambda v, put=put, value=value: put((v,) + value[1:])))
        elif isinstance(value, float):
            out.append((path, lambda v, put=put: put(v)))
    return out


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_every_float_setting_refuses_nan_and_infinity_by_its_dotted_field(bad):
    """Fails before the fix: NaN passed every range check (every comparison with NaN is False) and inf passed
    the one-sided ones, so a run started and failed inside torch."""
    paths = _float_paths(_cfg())
    assert len(paths) >= 25 and "train.lr" in dict(paths) and "data.datasets[0].loss_weight" in dict(paths)
    for path, put in paths:
        with pytest.raises(ConfigError) as e:
            put(bad).validate()
        hits = [p for p in e.value.problems if p.startswith(f"{path} must be a finite number")]
        assert len(hits) == 1, (path, e.value.problems)  # named once, by its dotted field


def test_nan_from_a_toml_file_is_refused(tmp_path):
    (tmp_path / "run.toml").write_text('[train]\nlr = nan\n[validation]\nguidance = inf\n[[data.datasets]]\n'
                                       'path = "."\n')
    with pytest.raises(ConfigError, match=r"train.lr must be a finite number \(got nan\)") as e:
        load_run_config(tmp_path / "run.toml").validate()
    assert any(p.startswith("validation.guidance must be a finite number (got inf)") for p in e.value.problems)
